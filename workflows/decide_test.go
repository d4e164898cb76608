package workflows

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
)

func TestDecidePlugin(t *testing.T) {
	want := Plugin{Name: "gh", Version: "1.2.0"}
	wantDigest := Plugin{Name: "gh", Version: "1.2.0", Digest: "sha256:aa"}
	tests := []struct {
		desc    string
		want    Plugin
		probe   activities.Probe
		deliver bool
		reason  string
	}{
		{"present, same version", want, activities.Probe{Present: true, Version: "1.2.0"}, false, "already on the box"},
		{"absent", want, activities.Probe{Reason: "no manifest on the box"}, true, "absent: no manifest"},
		{"unparseable counts as absent", want, activities.Probe{Reason: "invalid manifest: empty"}, true, "absent: invalid manifest"},
		{"stale", want, activities.Probe{Present: true, Version: "1.1.0"}, true, "stale: box has 1.1.0"},
		{"newer on box is still not the declared one", want, activities.Probe{Present: true, Version: "9.0.0"}, true, "stale"},
		{"digest matches", wantDigest, activities.Probe{Present: true, Version: "1.2.0", Digest: "sha256:aa"}, false, "already"},
		{"digest differs", wantDigest, activities.Probe{Present: true, Version: "1.2.0", Digest: "sha256:bb"}, true, "digest differs"},
		{"digest unknown on box", wantDigest, activities.Probe{Present: true, Version: "1.2.0"}, false, "already"},
		{"digest unknown in declaration", want, activities.Probe{Present: true, Version: "1.2.0", Digest: "sha256:bb"}, false, "already"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			deliver, reason := DecidePlugin(tt.want, tt.probe)
			require.Equal(t, tt.deliver, deliver)
			require.Contains(t, reason, tt.reason)
		})
	}
}

func TestDecideRestart(t *testing.T) {
	since := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	tests := []struct {
		desc      string
		delivered int
		present   int
		facts     activities.RestartFacts
		want      RestartDecision
		reason    string
	}{
		{"nothing delivered, nothing pending", 0, 5, activities.RestartFacts{},
			RestartDecision{}, "5 plugin(s) already on the box"},
		{"delivered now, same runtime", 2, 3, activities.RestartFacts{PendingSince: &since, MarkIdentities: []string{"r1", "r1"}, CurrentIdentity: "r1"},
			RestartDecision{Restart: true}, "2 plugin(s) delivered"},
		{"pending from an earlier run", 0, 5, activities.RestartFacts{PendingSince: &since, MarkIdentities: []string{"r1"}, CurrentIdentity: "r1"},
			RestartDecision{Restart: true}, "restart still owed"},
		{"earlier delivery never verified", 0, 5, activities.RestartFacts{PendingSince: &since, MarkIdentities: []string{""}, CurrentIdentity: "r2"},
			RestartDecision{Restart: true}, "not verified"},
		{"runtime restarted after every delivery", 0, 5, activities.RestartFacts{PendingSince: &since, MarkIdentities: []string{"r1", "r2"}, CurrentIdentity: "r3"},
			RestartDecision{Clear: true}, "already restarted"},
		{"runtime restarted between two deliveries", 2, 0, activities.RestartFacts{PendingSince: &since, MarkIdentities: []string{"r1", "r2"}, CurrentIdentity: "r2"},
			RestartDecision{Restart: true}, "delivered"},
		{"pending flag without marks", 0, 1, activities.RestartFacts{PendingSince: &since, CurrentIdentity: "r1"},
			RestartDecision{Restart: true}, "owed"},
		{"delivered but no mark found", 1, 0, activities.RestartFacts{},
			RestartDecision{Restart: true}, "to be safe"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			got := DecideRestart(tt.delivered, tt.present, tt.facts)
			require.NotEmpty(t, got.Code, "a metrics label for every decision")
			require.Equal(t, tt.want.Restart, got.Restart, got.Reason)
			require.Equal(t, tt.want.Clear, got.Clear, got.Reason)
			require.Contains(t, got.Reason, tt.reason)
		})
	}
}

func TestValidate(t *testing.T) {
	ok := ReconcileInput{WorkspaceID: "ws-1", Plugins: []Plugin{{Name: "gh", Version: "1.0.0"}}}
	require.NoError(t, ok.Validate())
	many := make([]Plugin, MaxPlugins+1)
	for i := range many {
		many[i] = Plugin{Name: "p" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i/676)), Version: "1"}
	}
	tests := []struct {
		desc  string
		edit  func(*ReconcileInput)
		field string
	}{
		{"bad workspace", func(in *ReconcileInput) { in.WorkspaceID = "../ws" }, "WorkspaceID"},
		{"empty list", func(in *ReconcileInput) { in.Plugins = nil }, "Plugins: at least one"},
		{"dot-dot", func(in *ReconcileInput) { in.Plugins[0].Name = "../x" }, "Plugins[0].Name"},
		{"slash", func(in *ReconcileInput) { in.Plugins[0].Name = "a/b" }, "Plugins[0].Name"},
		{"space", func(in *ReconcileInput) { in.Plugins[0].Name = "a b" }, "Plugins[0].Name"},
		{"shell", func(in *ReconcileInput) { in.Plugins[0].Name = "a;rm -rf /" }, "Plugins[0].Name"},
		{"look-alike", func(in *ReconcileInput) { in.Plugins[0].Name = "gіthub" }, "Plugins[0].Name"},
		{"too long", func(in *ReconcileInput) { in.Plugins[0].Name = string(make([]byte, 200)) }, "Plugins[0].Name"},
		{"bad version", func(in *ReconcileInput) { in.Plugins[0].Version = "1 0" }, "Plugins[0].Version"},
		{"duplicate", func(in *ReconcileInput) { in.Plugins = append(in.Plugins, in.Plugins[0]) }, "declared twice"},
		{"too many", func(in *ReconcileInput) { in.Plugins = many }, "at most 300"},
		{"parallel", func(in *ReconcileInput) { in.MaxParallel = 1000 }, "MaxParallel"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			in := ok
			in.Plugins = append([]Plugin(nil), ok.Plugins...)
			tt.edit(&in)
			require.ErrorContains(t, in.Validate(), tt.field)
		})
	}
}
