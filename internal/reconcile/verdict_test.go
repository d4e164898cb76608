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

func TestNextDesired(t *testing.T) {
	t.Parallel()
	a1, a2, b1, c1 := Plugin{Name: "a", Version: "1"}, Plugin{Name: "a", Version: "2"}, Plugin{Name: "b", Version: "1"}, Plugin{Name: "c", Version: "1"}
	stored := func(ps []Plugin, removals ...string) *Desired { return &Desired{Plugins: ps, Removals: removals} }
	tests := []struct {
		desc    string
		stored  *Desired
		tracked []Plugin
		in      DeclareInput
		want    Desired
	}{
		{"a fresh workspace", nil, nil, DeclareInput{Plugins: []Plugin{b1, a1}}, Desired{Plugins: []Plugin{a1, b1}}},
		{"no declaration stored: the tracking rows stand for it", nil, []Plugin{a1, b1}, DeclareInput{Plugins: []Plugin{c1}}, Desired{Plugins: []Plugin{a1, b1, c1}}},
		{"no declaration stored, Prune: the tracked rest is owed a removal", nil, []Plugin{a1, b1}, DeclareInput{Plugins: []Plugin{c1}, Prune: true}, Desired{Plugins: []Plugin{c1}, Removals: []string{"a", "b"}}},
		{"without Prune nothing is removed, tracked or not", stored([]Plugin{a1}), []Plugin{a1, b1}, DeclareInput{Plugins: []Plugin{c1}}, Desired{Plugins: []Plugin{a1, c1}}},
		{"Prune drops a declared plugin that is not tracked", stored([]Plugin{a1, b1}), []Plugin{a1}, DeclareInput{Plugins: []Plugin{a2}, Prune: true}, Desired{Plugins: []Plugin{a2}, Removals: []string{"b"}}},
		{"Prune drops a tracked plugin that is not declared", stored([]Plugin{a1}), []Plugin{a1, c1}, DeclareInput{Plugins: []Plugin{a1}, Prune: true}, Desired{Plugins: []Plugin{a1}, Removals: []string{"c"}}},
		{"an owed removal stays owed", stored([]Plugin{a1}, "b"), []Plugin{a1, b1}, DeclareInput{Plugins: []Plugin{a2}}, Desired{Plugins: []Plugin{a2}, Removals: []string{"b"}}},
		{"declared again: no longer owed", stored([]Plugin{a1}, "b"), []Plugin{a1, b1}, DeclareInput{Plugins: []Plugin{b1}}, Desired{Plugins: []Plugin{a1, b1}}},
		{"Converge keeps what is stored", stored([]Plugin{a1}, "b"), []Plugin{a1, b1, c1}, DeclareInput{Plugins: []Plugin{c1}, Converge: true}, Desired{Plugins: []Plugin{a1}, Removals: []string{"b"}}},
		{"Converge with nothing stored: the tracking rows and the plugins given", nil, []Plugin{a1}, DeclareInput{Plugins: []Plugin{b1}, Converge: true}, Desired{Plugins: []Plugin{a1, b1}}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			require.Equal(t, tt.want, NextDesired(tt.stored, tt.tracked, tt.in))
		})
	}
}
