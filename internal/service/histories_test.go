package service_test

import (
	"encoding/json"
	"os"
	"path/filepath"
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
// the replay test. It runs only with RECORD_HISTORIES=1; regenerate them
// when a change to workflow code is meant to be incompatible (and version
// it with workflow.GetVersion instead whenever runs may be in flight).
func TestRecordHistories(t *testing.T) {
	if os.Getenv("RECORD_HISTORIES") == "" {
		t.Skip("set RECORD_HISTORIES=1 to re-record workflows/testdata/histories")
	}
	s := servicetest.New(t)
	index := map[string]string{} // file -> workflow ID, for the replayer
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
	data, err := json.MarshalIndent(index, "", "  ")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(historiesDir, "executions.json"), data, 0o644))
}
