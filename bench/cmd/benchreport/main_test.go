package main

import (
	"strings"
	"testing"
)

func f(x float64) *float64 { return &x }

// The headline of the README comes from here: each tool's fresh-runner
// time over its warm-laptop time, with daemon start kept out of both and
// shown on its own.
func TestMarkdownFreshOverWarm(t *testing.T) {
	runs := []Run{
		{Scenario: "go-service", Case: "gofile", Peer: "kiln", Rep: 1, OK: true, Seconds: 15},
		{Scenario: "go-service", Case: "gofile", Peer: "buildkit", Rep: 1, OK: true, Seconds: 40, DaemonSeconds: f(0.5)},
		{Scenario: "go-service", Case: "gofile", Peer: "docker", Rep: 1, OK: true, Seconds: 30},
		{Scenario: "go-service", Case: "gofile-warm", Peer: "kiln", Rep: 1, OK: true, Seconds: 3},
		{Scenario: "go-service", Case: "gofile-warm", Peer: "buildkit", Rep: 1, OK: true, Seconds: 4},
		{Scenario: "go-service", Case: "gofile", Peer: "kiln", Rep: 2, OK: true, Seconds: 17},
		{Scenario: "go-service", Case: "gofile", Peer: "buildkit", Rep: 2, OK: true, Seconds: 44, DaemonSeconds: f(0.7)},
		{Scenario: "go-service", Case: "gofile-warm", Peer: "kiln", Rep: 2, OK: false, ExitCode: 1, Error: "boom"},
		{Scenario: "go-service", Case: "gofile-warm", Peer: "buildkit", Rep: 2, OK: true, Seconds: 4},
	}
	res := Results{Reps: 2, Runs: runs}
	res.Cases, res.Peers = summarize(runs)
	md := markdown(res)

	wantRow := "| go-service / gofile | 16.0 [15.0–17.0] | 3.0 [3.0–3.0] (1 failed) | 5.33× | 42.0 [40.0–44.0] | 4.0 [4.0–4.0] | 10.50× |"
	if !strings.Contains(md, wantRow) {
		t.Errorf("fresh/warm row missing; want %q in\n%s", wantRow, md)
	}
	if !strings.Contains(md, "| scenario / change | kiln fresh | kiln warm | kiln fresh/warm | buildkit fresh | buildkit warm | buildkit fresh/warm |") {
		t.Errorf("docker has no warm case and must not get warm columns:\n%s", md)
	}
	// The fresh-runner table: no warm rows, buildkit's daemon start beside
	// its build time, every peer over kiln.
	fresh := md[strings.Index(md, "Wall time"):strings.Index(md, "MB pulled")]
	if strings.Contains(fresh, "gofile-warm") {
		t.Errorf("a warm case in the fresh-runner table:\n%s", fresh)
	}
	wantFresh := "| go-service / gofile | 16.0 [15.0–17.0] | 42.0 [40.0–44.0] | 30.0 [30.0–30.0] | 0.60 | 2.62× | 1.88× | |"
	if !strings.Contains(fresh, wantFresh) {
		t.Errorf("want %q in\n%s", wantFresh, fresh)
	}
}

// On a shared machine the load beside the numbers says how far to trust
// them: the report gives its range, and says nothing when no run had one.
func TestMarkdownLoadRange(t *testing.T) {
	runs := []Run{
		{Scenario: "go-service", Case: "gofile", Peer: "kiln", Rep: 1, OK: true, Seconds: 9, Load1: f(1.5)},
		{Scenario: "go-service", Case: "gofile", Peer: "buildkit", Rep: 1, OK: true, Seconds: 29, Load1: f(0.25)},
		{Scenario: "go-service", Case: "gofile", Peer: "kiln", Rep: 2, OK: true, Seconds: 9},
	}
	res := Results{Reps: 2, Runs: runs}
	res.Cases, res.Peers = summarize(runs)
	if md := markdown(res); !strings.Contains(md, "load average just before each build: 0.25–1.50") {
		t.Errorf("load range missing:\n%s", md)
	}
	for i := range runs {
		runs[i].Load1 = nil
	}
	if md := markdown(res); strings.Contains(md, "load average") {
		t.Errorf("a load range with no loads recorded:\n%s", md)
	}
}
