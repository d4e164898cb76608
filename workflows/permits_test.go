package workflows_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
	"github.com/plugin-reconciler/plugin-reconciler/workflows/workflowstest"
)

// A restart gated by a sweep asks for a permit for its round, restarts once
// it has it, and gives it back; a reconcile that restarts nothing asks for
// none.
func TestGatedRestartTakesAndReturnsOnePermit(t *testing.T) {
	for _, tt := range []struct {
		desc     string
		owed     bool
		requests int
	}{{"a restart owed", true, 1}, {"nothing owed", false, 0}} {
		t.Run(tt.desc, func(t *testing.T) {
			var s testsuite.WorkflowTestSuite
			env := s.NewTestWorkflowEnvironment()
			env.RegisterWorkflow(workflows.ReconcilePlugin)
			env.RegisterActivity(&activities.Activities{})
			box := reconcile.Box{ID: "ws-1", InstanceID: "i-0123456789abcdef0", OSUser: "ubuntu", PluginRoot: "/opt/agent/plugins"}
			env.OnActivity(reconcile.ActivityRecordDeclaration, mock.Anything, mock.Anything).Return(
				reconcile.Declared{Workspace: box, Generation: 1, Observed: 1, Plugins: []reconcile.Plugin{{Name: "a", Version: "1"}}}, nil)
			env.OnActivity(reconcile.ActivityClaimBoxQueue, mock.Anything, mock.Anything).Return(reconcile.BoxRoute{}, nil)
			env.OnActivity(reconcile.ActivityProbeManifest, mock.Anything, mock.Anything).Return(reconcile.Probe{Present: true, Version: "1"}, nil)
			env.OnActivity(reconcile.ActivityRecordTracking, mock.Anything, mock.Anything).Return(nil)
			facts := reconcile.RestartFacts{JournalRead: true, CurrentIdentity: "r1"}
			if tt.owed {
				facts.Journal = []reconcile.JournalEntry{{Plugin: "a", Identity: "r1"}}
			}
			env.OnActivity(reconcile.ActivityReadRestartFacts, mock.Anything, mock.Anything).Return(facts, nil)
			restarts := 0
			env.OnActivity(reconcile.ActivityRestartBox, mock.Anything, mock.Anything).Return(
				func(context.Context, reconcile.RestartInput) (reconcile.RestartOutcome, error) {
					restarts++
					return reconcile.RestartOutcome{Mode: "runtime", Restarted: true}, nil
				}).Maybe()
			permits := workflowstest.GrantPermits(env, "sweep-1")
			start := env.Now()
			env.ExecuteWorkflow(workflows.ReconcileWorkspace, workflows.ReconcileInput{
				WorkspaceID: "ws-1", Plugins: []workflows.Plugin{{Name: "a", Version: "1"}}, RestartGate: "sweep-1",
			})
			require.NoError(t, env.GetWorkflowError())
			require.Len(t, permits.Requested(), tt.requests)
			require.Len(t, permits.Released(), tt.requests, "every permit given back")
			if tt.owed {
				require.Equal(t, 1, restarts)
				require.Equal(t, 1, permits.Requested()[0].Seq, "asked for round 1")
				require.Less(t, env.Now().Sub(start), time.Minute, "granted at once: no wait for the permit's timeout")
			}
		})
	}
}
