package cli

import (
	"runtime/debug"
	"testing"
)

func TestVersionLine(t *testing.T) {
	vcs := []debug.BuildSetting{
		{Key: "vcs", Value: "git"},
		{Key: "vcs.revision", Value: "232c1c418e7ff7353d96321a5312e4541352718c"},
		{Key: "vcs.time", Value: "2026-12-03T15:55:25Z"},
		{Key: "vcs.modified", Value: "false"},
	}
	dirty := append(append([]debug.BuildSetting{}, vcs[:3]...), debug.BuildSetting{Key: "vcs.modified", Value: "true"})
	for _, tc := range []struct {
		name    string
		version string
		info    *debug.BuildInfo
		want    string
	}{
		{"no build info", "dev", nil, "kiln dev"},
		{"go build outside a checkout", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "kiln dev"},
		{"go build in a checkout", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs},
			"kiln dev (commit 232c1c418e7ff7353d96321a5312e4541352718c, 2026-12-03T15:55:25Z)"},
		{"uncommitted changes", "dev", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: dirty},
			"kiln dev (commit 232c1c418e7ff7353d96321a5312e4541352718c, 2026-12-03T15:55:25Z, modified)"},
		{"go install @version", "dev", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.1"}}, "kiln v0.3.1"},
		{"release link-time version wins", "v1.0.0", &debug.BuildInfo{Main: debug.Module{Version: "v0.3.1"}, Settings: vcs},
			"kiln v1.0.0 (commit 232c1c418e7ff7353d96321a5312e4541352718c, 2026-12-03T15:55:25Z)"},
	} {
		if got := versionLine(tc.version, tc.info); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
