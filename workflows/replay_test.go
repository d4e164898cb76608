package workflows

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"
)

// TestReplayRecordedHistories replays real histories of the shipped
// workflows (recorded by internal/service's TestRecordHistories: all
// present, deliver and restart, partial failure, cancel, two restart
// rounds, a Prune declaration that removes and delivers, a run whose box
// work went to the worker it picked, and a child of each; a sweep pacing
// restarts with permits, its continued run and a child, a dry-run sweep):
// a change to workflow code that would break runs in flight fails here.
func TestReplayRecordedHistories(t *testing.T) {
	dir := filepath.Join("testdata", "histories")
	data, err := os.ReadFile(filepath.Join(dir, "executions.json"))
	require.NoError(t, err)
	var index map[string]string // file -> workflow ID
	require.NoError(t, json.Unmarshal(data, &index))
	require.Len(t, index, 20)
	for file, workflowID := range index {
		t.Run(file, func(t *testing.T) {
			f, err := os.Open(filepath.Join(dir, file))
			require.NoError(t, err)
			defer f.Close()
			h, err := client.HistoryFromJSON(f, client.HistoryJSONOptions{})
			require.NoError(t, err)
			r := worker.NewWorkflowReplayer()
			r.RegisterWorkflow(ReconcileWorkspace)
			r.RegisterWorkflow(ReconcilePlugin)
			r.RegisterWorkflow(SweepFleet)
			require.NoError(t, r.ReplayWorkflowHistoryWithOptions(nil, h, worker.ReplayWorkflowHistoryOptions{
				OriginalExecution: workflow.Execution{ID: workflowID},
			}))
		})
	}
}
