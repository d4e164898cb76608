package reconcile

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDecidePlugin(t *testing.T) {
	t.Parallel()
	want := Plugin{Name: "gh", Version: "1.2.0"}
	wantDigest := Plugin{Name: "gh", Version: "1.2.0", Digest: "sha256:aa"}
	tests := []struct {
		desc    string
		want    Plugin
		probe   Probe
		verdict Verdict
		reason  string
	}{
		{"present, same version", want, Probe{Present: true, Version: "1.2.0"}, VerdictPresent, "already on the box"},
		{"absent", want, Probe{Missing: MissNoManifest, Reason: "no plugin.yaml on i-1"}, VerdictAbsent, "absent: no plugin.yaml"},
		{"unparseable counts as not there", want, Probe{Missing: MissInvalid, Reason: "invalid manifest: empty"}, VerdictUnreadable, "absent: invalid manifest"},
		{"another plugin's manifest", want, Probe{Missing: MissOtherPlugin, Reason: `manifest names plugin "x"`}, VerdictUnreadable, "absent: manifest names"},
		{"stale", want, Probe{Present: true, Version: "1.1.0"}, VerdictStale, "stale: box has 1.1.0"},
		{"newer on box is still not the declared one", want, Probe{Present: true, Version: "9.0.0"}, VerdictStale, "stale"},
		{"digest matches", wantDigest, Probe{Present: true, Version: "1.2.0", Digest: "sha256:aa"}, VerdictPresent, "already"},
		{"digest differs", wantDigest, Probe{Present: true, Version: "1.2.0", Digest: "sha256:bb"}, VerdictDigestDiffers, "digest differs"},
		{"digest unknown on box", wantDigest, Probe{Present: true, Version: "1.2.0"}, VerdictPresent, "already"},
		{"digest unknown in declaration", want, Probe{Present: true, Version: "1.2.0", Digest: "sha256:bb"}, VerdictPresent, "already"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			v := DecidePlugin(tt.want, tt.probe)
			require.Equal(t, tt.verdict, v)
			require.Equal(t, v != VerdictPresent, v.Deliver())
			require.Contains(t, v.Reason(tt.want, tt.probe), tt.reason)
		})
	}
}

func TestDeclare(t *testing.T) {
	t.Parallel()
	a1, a2, b1, c1 := Plugin{Name: "a", Version: "1"}, Plugin{Name: "a", Version: "2"}, Plugin{Name: "b", Version: "1"}, Plugin{Name: "c", Version: "1"}
	tests := []struct {
		desc     string
		stored   []Plugin
		declared []Plugin
		prune    bool
		want     []Plugin
	}{
		{"first declaration", nil, []Plugin{b1, a1}, false, []Plugin{a1, b1}},
		{"adds, a later version replaces", []Plugin{a1, b1}, []Plugin{a2, c1}, false, []Plugin{a2, b1, c1}},
		{"a narrower declaration removes nothing", []Plugin{a1, b1}, []Plugin{b1}, false, []Plugin{a1, b1}},
		{"prune: the declaration is the set", []Plugin{a1, b1, c1}, []Plugin{c1, a2}, true, []Plugin{a2, c1}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			require.Equal(t, tt.want, Declare(tt.stored, tt.declared, tt.prune))
		})
	}
}
