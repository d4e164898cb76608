package service_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	historypb "go.temporal.io/api/history/v1"
	"go.temporal.io/api/temporalproto"

	"github.com/plugin-reconciler/plugin-reconciler/internal/fakeaws"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service/servicetest"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// historiesDir is where the replay test (package workflows) finds them.
const historiesDir = "../../workflows/testdata/histories"

// TestRecordHistories records real histories of the shipped workflows for
// the replay test. It runs only with RECORD_HISTORIES set, to "all" or to
// the sets to record ("reconcile", "rounds", "sweep", "declarations",
// "routes", "indexed"), which replace their own files and keep the others: re-record
// a set only when a change to workflow code is meant to be incompatible
// with it (and version it with workflow.GetVersion instead whenever runs
// may be in flight).
func TestRecordHistories(t *testing.T) {
	want := os.Getenv("RECORD_HISTORIES")
	if want == "" {
		t.Skip("set RECORD_HISTORIES=all (or a list of sets) to re-record workflows/testdata/histories")
	}
	s := servicetest.New(t)
	index := map[string]string{} // file -> workflow ID, for the replayer
	if data, err := os.ReadFile(filepath.Join(historiesDir, "executions.json")); err == nil {
		require.NoError(t, json.Unmarshal(data, &index))
	}
	save := func(name, workflowID, runID string) {
		index[name+".json"] = workflowID
		var h historypb.History
		iter := s.Client.GetWorkflowHistory(ctx(t), workflowID, runID, false, 0)
		for iter.HasNext() {
			ev, err := iter.Next()
			require.NoError(t, err)
			h.Events = append(h.Events, ev)
		}
		data, err := temporalproto.CustomJSONMarshalOptions{Indent: "  "}.Marshal(&h)
		require.NoError(t, err)
		require.NoError(t, os.MkdirAll(historiesDir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(historiesDir, name+".json"), data, 0o644))
	}
	record := func(name, ws string, plugins []workflows.Plugin, during func(runID string)) {
		run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: ws, Plugins: plugins})
		require.NoError(t, err)
		if during != nil {
			during(run.GetRunID())
		}
		_, _ = workflows.Result(ctx(t), run)
		save(name, run.GetID(), run.GetRunID())
		save(name+"-child", workflows.PluginWorkflowID(run.GetID(), plugins[0].Name), "")
	}
	sets := map[string]func(){
		"reconcile": func() {
			s.Box("ws-all-present", all())
			record("all-present", "ws-all-present", declared, nil)

			s.Box("ws-deliver", all("github-tools", "code-review"))
			record("deliver-and-restart", "ws-deliver", declared, nil)

			s.Box("ws-partial", all())
			record("partial-failure", "ws-partial", append([]workflows.Plugin{{Name: "not-in-catalog", Version: "1.0.0"}}, declared...), nil)

			s.Box("ws-cancel", all("github-tools"))
			record("cancel", "ws-cancel", declared, func(runID string) {
				s.Fleet.AWS.SetFaults(fakeaws.Faults{Latency: 2 * time.Second})
				time.Sleep(time.Second)
				require.NoError(t, s.Client.CancelWorkflow(ctx(t), workflows.ReconcileWorkflowID("ws-cancel"), runID))
			})
			s.Fleet.AWS.SetFaults(fakeaws.Faults{})
		},
		// Two rounds: a declaration arrives during the first restart.
		"rounds": func() {
			box := s.Box("ws-rounds", all("code-review"))
			require.NoError(t, box.SetRestartDelay(2*time.Second))
			record("restart-rounds", "ws-rounds", declared, func(string) {
				require.Eventually(t, box.Restarting, time.Minute, 5*time.Millisecond)
				upgrade := append([]workflows.Plugin(nil), declared...)
				upgrade[0].Version = "1.3.0"
				_, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-rounds", Plugins: upgrade})
				require.NoError(t, err)
			})
		},
		// A sweep that paces restarts with permits and continues as new,
		// and a dry-run sweep.
		"sweep": func() {
			boxes := fleetOf(t, s, "ws-hist", 3, func(int) bool { return true })
			for _, b := range boxes {
				require.NoError(t, b.SetRestartDelay(500*time.Millisecond))
			}
			run, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{MaxConcurrency: 3, MaxRestartsInFlight: 1, PageSize: 2, MaxPerRun: 2})
			require.NoError(t, err)
			var rep workflows.SweepReport
			require.NoError(t, s.Client.GetWorkflow(ctx(t), workflows.SweepWorkflowID, "").Get(ctx(t), &rep))
			save("sweep-permits", workflows.SweepWorkflowID, run.GetRunID())
			save("sweep-continued", workflows.SweepWorkflowID, "")
			save("sweep-child", workflows.ReconcileWorkflowID("ws-hist-000"), "")

			plan, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{DryRun: true})
			require.NoError(t, err)
			require.NoError(t, plan.Get(ctx(t), &rep))
			// The sweep's ID is kept for the last run saved under it.
			index["sweep-dry-run.json"] = workflows.SweepWorkflowID
			save("sweep-dry-run", workflows.SweepWorkflowID, plan.GetRunID())
		},
		// A Prune declaration that removes two plugins and delivers one,
		// with one restart; the child saved is a removal's.
		"declarations": func() {
			s.Box("ws-prune", all("code-review"))
			s.Reconcile("ws-prune", withoutPlugin(declared, "code-review"))
			run, err := workflows.Start(ctx(t), s.Client, workflows.ReconcileInput{WorkspaceID: "ws-prune", Plugins: declared[:3], Prune: true})
			require.NoError(t, err)
			res, err := workflows.Result(ctx(t), run)
			require.NoError(t, err)
			require.Equal(t, 2, res.Count(workflows.ActionRemoved))
			save("prune", run.GetID(), run.GetRunID())
			save("prune-child", workflows.PluginWorkflowID(run.GetID(), declared[4].Name), "")
		},
		// A reconcile whose box work goes to the worker it picked (the
		// box-affinity version): a delivery and its restart.
		"routes": func() {
			s.Box("ws-routed", all("code-review"))
			record("routed", "ws-routed", declared, nil)
		},
		// A reconcile whose start carries its search attributes and whose
		// plugins run up to 16 at a time (the start-indexed version): a
		// delivery and its restart.
		"indexed": func() {
			s.Box("ws-indexed", all("slack-notify"))
			record("indexed", "ws-indexed", declared, nil)
		},
	}
	for _, name := range []string{"reconcile", "rounds", "sweep", "declarations", "routes", "indexed"} {
		if want == "all" || slices.Contains(strings.Split(want, ","), name) {
			sets[name]()
		}
	}
	data, err := json.MarshalIndent(index, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(historiesDir, "executions.json"), data, 0o644))
}

func withoutPlugin(ps []workflows.Plugin, name string) []workflows.Plugin {
	var out []workflows.Plugin
	for _, p := range ps {
		if p.Name != name {
			out = append(out, p)
		}
	}
	return out
}
