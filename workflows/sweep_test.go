package workflows

import (
	"context"
	"sync"
	"testing"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

func TestPermitPool(t *testing.T) {
	t.Parallel()
	a1, a2, b1, c1 := PermitRequest{"a", 1}, PermitRequest{"a", 2}, PermitRequest{"b", 1}, PermitRequest{"c", 1}
	grants := func(p *permitPool) []PermitRequest {
		var out []PermitRequest
		for {
			g, ok := p.next()
			if !ok {
				return out
			}
			out = append(out, g)
		}
	}
	tests := []struct {
		desc   string
		events func(p *permitPool) []PermitRequest
		want   []PermitRequest
		idle   bool
	}{
		{"one permit, two asking: one granted", func(p *permitPool) []PermitRequest {
			p.request(a1, true)
			p.request(b1, true)
			return grants(p)
		}, []PermitRequest{a1}, false},
		{"a release hands the permit on", func(p *permitPool) []PermitRequest {
			p.request(a1, true)
			p.request(b1, true)
			grants(p)
			p.release(a1)
			return grants(p)
		}, []PermitRequest{b1}, false},
		{"a holder that ends without releasing frees its permit", func(p *permitPool) []PermitRequest {
			p.request(a1, true)
			p.request(b1, true)
			grants(p)
			p.holderGone("a")
			return grants(p)
		}, []PermitRequest{b1}, false},
		{"a reset holder asking again for its round is granted again, no second permit", func(p *permitPool) []PermitRequest {
			p.request(a1, true)
			p.request(b1, true)
			grants(p)
			p.request(a1, true)
			return grants(p)
		}, []PermitRequest{a1}, false},
		{"a later round frees the earlier round's permit", func(p *permitPool) []PermitRequest {
			p.request(a1, true)
			p.request(b1, true)
			grants(p)
			p.request(a2, true)
			return grants(p)
		}, []PermitRequest{b1}, false},
		{"a stale release does not free a later round's permit", func(p *permitPool) []PermitRequest {
			p.request(a2, true)
			p.request(b1, true)
			grants(p)
			p.release(a1)
			return grants(p)
		}, nil, false},
		{"a waiting request withdrawn is never granted", func(p *permitPool) []PermitRequest {
			p.request(a1, true)
			p.request(b1, true)
			p.request(c1, true)
			grants(p)
			p.release(b1)
			p.release(a1)
			return grants(p)
		}, []PermitRequest{c1}, false},
		{"all back: idle", func(p *permitPool) []PermitRequest {
			p.request(a1, true)
			grants(p)
			p.holderGone("a")
			return grants(p)
		}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			p := newPermitPool(1)
			require.Equal(t, tt.want, tt.events(p))
			require.Equal(t, tt.idle, p.idle())
		})
	}
}

// A dry-run sweep's plans run under the plan's workflow ID, so that a real
// trigger meanwhile is never folded into a plan.
func TestDryRunSweepPlansUnderThePlanID(t *testing.T) {
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.RegisterActivity(&activities.Activities{})
	env.OnActivity(reconcile.ActivityListWorkspaces, mock.Anything, mock.Anything).Return(func(_ context.Context, in reconcile.PageInput) ([]reconcile.SweepTarget, error) {
		if in.After != "" {
			return nil, nil
		}
		return []reconcile.SweepTarget{{WorkspaceID: "ws-1", Plugins: []reconcile.DeclaredPlugin{{Name: "a", Version: "1"}}}}, nil
	})
	var mu sync.Mutex
	var ids []string
	env.OnWorkflow(ReconcileWorkspace, mock.Anything, mock.Anything).Return(func(ctx workflow.Context, in ReconcileInput) (ReconcileResult, error) {
		mu.Lock()
		defer mu.Unlock()
		ids = append(ids, workflow.GetInfo(ctx).WorkflowExecution.ID)
		return ReconcileResult{WorkspaceID: in.WorkspaceID, DryRun: in.DryRun}, nil
	})
	env.ExecuteWorkflow(SweepFleet, SweepInput{DryRun: true})
	require.NoError(t, env.GetWorkflowError())
	require.Equal(t, []string{PlanWorkflowID("ws-1")}, ids)
}
