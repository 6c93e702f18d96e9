// Command benchreport turns the bench's raw run log (one JSON object per
// measured build) into results.json (every run plus per-case summaries, the
// input of chart.py) and results.md (the tables the README shows: fresh
// runner against warm laptop for each tool that has both, then every peer
// on a fresh runner with its ratio to kiln).
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"time"
)

// Run is one measured build, as bench/lib.sh's measure writes it.
type Run struct {
	Scenario string  `json:"scenario"`
	Case     string  `json:"case"`
	Peer     string  `json:"peer"`
	Rep      int     `json:"rep"`
	OK       bool    `json:"ok"`
	ExitCode int     `json:"exit_code"`
	Seconds  float64 `json:"seconds"`
	// DaemonSeconds is how long a daemon-based peer's fresh daemon took to
	// answer before the build; not part of Seconds.
	DaemonSeconds *float64 `json:"daemon_seconds,omitempty"`
	// Load1 is the machine's 1-minute load average just before the build:
	// how much else was running on a shared machine.
	Load1       *float64 `json:"load1,omitempty"`
	PulledBytes int64    `json:"pulled_bytes"`
	PushedBytes int64    `json:"pushed_bytes"`
	Requests    int64    `json:"requests"`
	Log         string   `json:"log,omitempty"`
	Error       string   `json:"error,omitempty"`
	Files       int      `json:"files,omitempty"`
	Bytes       int64    `json:"bytes,omitempty"`
}

// Stat summarizes one peer on one case over its successful runs.
type Stat struct {
	Runs         int     `json:"runs"`
	Failures     int     `json:"failures"`
	Median       float64 `json:"median_seconds"`
	Min          float64 `json:"min_seconds"`
	Max          float64 `json:"max_seconds"`
	MedianPulled int64   `json:"median_pulled_bytes"`
	MedianPushed int64   `json:"median_pushed_bytes"`
	// MedianDaemon is the median daemon start over the runs that had one.
	MedianDaemon float64 `json:"median_daemon_seconds,omitempty"`
}

// warmSuffix marks a case run on the local state the case before it left
// (bench/lib.sh's cases_of): the warm laptop after the fresh-runner case
// without the suffix.
const warmSuffix = "-warm"

// Case is one scenario/case row of the table.
type Case struct {
	Scenario string          `json:"scenario"`
	Case     string          `json:"case"`
	Peers    map[string]Stat `json:"peers"`
}

// Results is results.json.
type Results struct {
	Machine  string   `json:"machine"`
	Reps     int      `json:"reps"`
	Started  string   `json:"started"`
	Finished string   `json:"finished"`
	Seconds  int64    `json:"total_seconds"`
	Peers    []string `json:"peers"`
	Cases    []Case   `json:"cases"`
	Runs     []Run    `json:"runs"`
}

func readRuns(path string) ([]Run, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open runs: %w", err)
	}
	defer f.Close()
	var runs []Run
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r Run
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		runs = append(runs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read runs: %w", err)
	}
	return runs, nil
}

func median[T int64 | float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := append([]T(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// summarize groups runs by case in the order cases were first measured.
func summarize(runs []Run) ([]Case, []string) {
	type key struct{ scenario, cas string }
	var order []key
	var peers []string
	byCase := map[key]map[string][]Run{}
	for _, r := range runs {
		k := key{r.Scenario, r.Case}
		if byCase[k] == nil {
			byCase[k] = map[string][]Run{}
			order = append(order, k)
		}
		if r.Peer != "floor" && !contains(peers, r.Peer) {
			peers = append(peers, r.Peer)
		}
		byCase[k][r.Peer] = append(byCase[k][r.Peer], r)
	}
	var cases []Case
	for _, k := range order {
		c := Case{Scenario: k.scenario, Case: k.cas, Peers: map[string]Stat{}}
		for peer, rs := range byCase[k] {
			var st Stat
			var secs []float64
			var pulled, pushed []int64
			var daemon []float64
			for _, r := range rs {
				if !r.OK {
					st.Failures++
					continue
				}
				st.Runs++
				secs = append(secs, r.Seconds)
				if r.DaemonSeconds != nil {
					daemon = append(daemon, *r.DaemonSeconds)
				}
				pulled = append(pulled, r.PulledBytes)
				pushed = append(pushed, r.PushedBytes)
			}
			if len(secs) > 0 {
				st.Median, st.MedianPulled, st.MedianPushed = median(secs), median(pulled), median(pushed)
				st.MedianDaemon = median(daemon)
				st.Min, st.Max = secs[0], secs[0]
				for _, s := range secs {
					st.Min, st.Max = min(st.Min, s), max(st.Max, s)
				}
			}
			c.Peers[peer] = st
		}
		cases = append(cases, c)
	}
	return cases, peers
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}

func timeCell(st Stat, ok bool) string {
	switch {
	case !ok:
		return "–"
	case st.Runs == 0:
		return fmt.Sprintf("**failed** (%d/%d)", st.Failures, st.Failures)
	}
	cell := fmt.Sprintf("%.1f [%.1f–%.1f]", st.Median, st.Min, st.Max)
	if st.Failures > 0 {
		cell += fmt.Sprintf(" (%d failed)", st.Failures)
	}
	return cell
}

func mb(n int64) string { return fmt.Sprintf("%.0f", float64(n)/1e6) }

func ratioCell(num, den Stat, nok, dok bool) string {
	if !nok || !dok || num.Runs == 0 || den.Runs == 0 || den.Median == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", num.Median/den.Median)
}

// warmPeers are the peers measured on a warm laptop too, in report order.
func warmPeers(res Results) []string {
	var ps []string
	for _, p := range res.Peers {
		for _, c := range res.Cases {
			if _, ok := c.Peers[p]; ok && strings.HasSuffix(c.Case, warmSuffix) && !contains(ps, p) {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// daemonPeers are the peers whose runs carry a daemon start time.
func daemonPeers(res Results) []string {
	var ps []string
	for _, p := range res.Peers {
		for _, c := range res.Cases {
			if st, ok := c.Peers[p]; ok && st.MedianDaemon > 0 && !contains(ps, p) {
				ps = append(ps, p)
			}
		}
	}
	return ps
}

// loadRange is the lowest and highest load average recorded before a build.
func loadRange(runs []Run) (lo, hi float64, ok bool) {
	for _, r := range runs {
		if r.Load1 == nil {
			continue
		}
		if !ok || *r.Load1 < lo {
			lo = *r.Load1
		}
		if !ok || *r.Load1 > hi {
			hi = *r.Load1
		}
		ok = true
	}
	return lo, hi, ok
}

func findCase(res Results, scenario, cas string) (Case, bool) {
	for _, c := range res.Cases {
		if c.Scenario == scenario && c.Case == cas {
			return c, true
		}
	}
	return Case{}, false
}

// markdown renders the tables: fresh runner against warm laptop, wall
// times on a fresh runner with ratios to kiln, then bytes.
func markdown(res Results) string {
	var b strings.Builder
	others := []string{}
	for _, p := range res.Peers {
		if p != "kiln" {
			others = append(others, p)
		}
	}
	if warm := warmPeers(res); len(warm) > 0 {
		fmt.Fprintf(&b, "Fresh runner against warm laptop, seconds, median [min–max] of %d runs. ", res.Reps)
		b.WriteString("*fresh* wipes all local state before the build (a new CI runner, the registry cache warm); ")
		b.WriteString("*warm* runs right after it on the local state it left (the same daemon, the same cache directory) ")
		b.WriteString("and builds the next change of the same kind, pushing and exporting the cache as on CI. ")
		b.WriteString("*fresh/warm* is what a fresh runner costs over a warm laptop (1.00× would be the promise); ")
		b.WriteString("daemon start is not included (see the next table).\n\n| scenario / change |")
		for _, p := range warm {
			fmt.Fprintf(&b, " %s fresh | %s warm | %s fresh/warm |", p, p, p)
		}
		b.WriteString("\n|---|")
		for range warm {
			b.WriteString("---:|---:|---:|")
		}
		b.WriteString("\n")
		for _, w := range res.Cases {
			if !strings.HasSuffix(w.Case, warmSuffix) {
				continue
			}
			fresh := strings.TrimSuffix(w.Case, warmSuffix)
			f, _ := findCase(res, w.Scenario, fresh)
			fmt.Fprintf(&b, "| %s / %s |", w.Scenario, fresh)
			for _, p := range warm {
				fs, fok := f.Peers[p]
				ws, wok := w.Peers[p]
				fmt.Fprintf(&b, " %s | %s | %s |", timeCell(fs, fok), timeCell(ws, wok), ratioCell(fs, ws, fok, wok))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	daemons := daemonPeers(res)
	fmt.Fprintf(&b, "Wall time in seconds of the whole CI step on a fresh runner, median [min–max] of %d runs; ", res.Reps)
	b.WriteString("*peer/kiln* is the peer's median divided by kiln's (above 1: kiln is faster). ")
	if len(daemons) > 0 {
		fmt.Fprintf(&b, "*%s start* is the median time its fresh daemon took to answer, before the build and not in its time; a CI job pays both. ", strings.Join(daemons, " start*, *"))
	}
	b.WriteString("The floor is hashing the context plus one manifest HEAD.\n\n")
	b.WriteString("| scenario / case |")
	for _, p := range res.Peers {
		fmt.Fprintf(&b, " %s |", p)
	}
	for _, p := range daemons {
		fmt.Fprintf(&b, " %s start |", p)
	}
	for _, p := range others {
		fmt.Fprintf(&b, " %s/kiln |", p)
	}
	b.WriteString(" floor |\n|---|")
	for range len(res.Peers) + len(daemons) + len(others) + 1 {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, c := range res.Cases {
		if strings.HasSuffix(c.Case, warmSuffix) {
			continue
		}
		fmt.Fprintf(&b, "| %s / %s |", c.Scenario, c.Case)
		for _, p := range res.Peers {
			st, ok := c.Peers[p]
			fmt.Fprintf(&b, " %s |", timeCell(st, ok))
		}
		for _, p := range daemons {
			if st, ok := c.Peers[p]; ok && st.MedianDaemon > 0 {
				fmt.Fprintf(&b, " %.2f |", st.MedianDaemon)
			} else {
				b.WriteString(" – |")
			}
		}
		k, kok := c.Peers["kiln"]
		for _, p := range others {
			st, ok := c.Peers[p]
			fmt.Fprintf(&b, " %s |", ratioCell(st, k, ok, kok))
		}
		if f, ok := c.Peers["floor"]; ok && f.Runs > 0 {
			fmt.Fprintf(&b, " %.3f |", f.Median)
		} else {
			b.WriteString(" |")
		}
		b.WriteString("\n")
	}
	b.WriteString("\nMB pulled / pushed through the registry (median), measured at a counting proxy in front of it.\n\n| scenario / case |")
	for _, p := range res.Peers {
		fmt.Fprintf(&b, " %s |", p)
	}
	b.WriteString("\n|---|")
	for range res.Peers {
		b.WriteString("---:|")
	}
	b.WriteString("\n")
	for _, c := range res.Cases {
		fmt.Fprintf(&b, "| %s / %s |", c.Scenario, c.Case)
		for _, p := range res.Peers {
			st, ok := c.Peers[p]
			if !ok || st.Runs == 0 {
				b.WriteString(" – |")
				continue
			}
			fmt.Fprintf(&b, " %s / %s |", mb(st.MedianPulled), mb(st.MedianPushed))
		}
		b.WriteString("\n")
	}
	var failed []Run
	for _, r := range res.Runs {
		if !r.OK {
			failed = append(failed, r)
		}
	}
	if len(failed) > 0 {
		b.WriteString("\nFailed builds (last lines of each log):\n")
		for _, r := range failed {
			fmt.Fprintf(&b, "\n- %s / %s, %s, run %d, exit %d (`%s`):\n\n  ```\n", r.Scenario, r.Case, r.Peer, r.Rep, r.ExitCode, r.Log)
			for _, l := range strings.Split(strings.TrimRight(r.Error, "\n"), "\n") {
				fmt.Fprintf(&b, "  %s\n", l)
			}
			b.WriteString("  ```\n")
		}
	}
	if lo, hi, ok := loadRange(res.Runs); ok {
		fmt.Fprintf(&b, "\n1-minute load average just before each build: %.2f–%.2f (other peers' daemons frozen during each build).\n", lo, hi)
	}
	fmt.Fprintf(&b, "\nTotal run time %s (%s → %s). Machine:\n\n```\n%s```\n",
		(time.Duration(res.Seconds) * time.Second).String(), res.Started, res.Finished, res.Machine)
	return b.String()
}

func main() {
	in := flag.String("in", "", "raw runs, one JSON object per line")
	machine := flag.String("machine", "", "machine.txt")
	reps := flag.Int("reps", 0, "repetitions per case")
	started := flag.Int64("started", 0, "start, Unix seconds")
	finished := flag.Int64("finished", 0, "end, Unix seconds")
	outJSON := flag.String("json", "", "results.json to write")
	outMD := flag.String("md", "", "results.md to write")
	flag.Parse()
	if *in == "" || *outJSON == "" || *outMD == "" {
		log.Fatal("benchreport: -in, -json and -md are required")
	}
	runs, err := readRuns(*in)
	if err != nil {
		log.Fatalf("benchreport: %v", err)
	}
	res := Results{Reps: *reps, Runs: runs, Seconds: *finished - *started,
		Started:  time.Unix(*started, 0).UTC().Format(time.RFC3339),
		Finished: time.Unix(*finished, 0).UTC().Format(time.RFC3339)}
	res.Cases, res.Peers = summarize(runs)
	if *machine != "" {
		m, err := os.ReadFile(*machine)
		if err != nil {
			log.Fatalf("benchreport: %v", err)
		}
		res.Machine = string(m)
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		log.Fatalf("benchreport: encode: %v", err)
	}
	if err := os.WriteFile(*outJSON, append(js, '\n'), 0o644); err != nil {
		log.Fatalf("benchreport: %v", err)
	}
	if err := os.WriteFile(*outMD, []byte(markdown(res)), 0o644); err != nil {
		log.Fatalf("benchreport: %v", err)
	}
}
