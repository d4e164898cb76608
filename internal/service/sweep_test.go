package service_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"

	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
	"github.com/plugin-reconciler/plugin-reconciler/internal/service/servicetest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/store"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

var sweepPlugins = []workflows.Plugin{{Name: "github-tools", Version: "1.2.0"}, {Name: "code-review", Version: "2.0.0"}}

// fleetOf boots n workspaces whose boxes hold both sweep plugins, except
// that drifted(i) boxes lost code-review, and records their tracking rows
// and declarations, reconciled in full, as an earlier reconcile would
// have: the fleet in its steady state.
func fleetOf(t *testing.T, s *servicetest.Stack, prefix string, n int, drifted func(int) bool) []*fleet.Box {
	boxes := make([]*fleet.Box, n)
	for i := range n {
		boot := map[string]string{"github-tools": "1.2.0", "code-review": "2.0.0"}
		if drifted(i) {
			delete(boot, "code-review")
		}
		ws := fmt.Sprintf("%s-%03d", prefix, i)
		boxes[i] = s.Box(ws, boot)
		for _, p := range sweepPlugins {
			require.NoError(t, s.Service.Store.RecordTracking(ctx(t), store.Tracking{
				WorkspaceID: ws, PluginName: p.Name, Version: p.Version, InstalledVia: "boot", WorkflowID: "seed", RunID: "seed",
			}))
		}
		d, _, err := s.Service.Store.Declare(ctx(t), reconcile.DeclareInput{WorkspaceID: ws, Plugins: sweepPlugins}, "seed", "seed")
		require.NoError(t, err)
		require.NoError(t, s.Service.Store.Observe(ctx(t), ws, d.Generation))
	}
	return boxes
}

// sample runs fn every interval until stop is closed and keeps its maximum.
func sample(interval time.Duration, fn func() int) (max func() int, stop func()) {
	var m atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			if v := int64(fn()); v > m.Load() {
				m.Store(v)
			}
			select {
			case <-done:
				return
			case <-time.After(interval):
			}
		}
	}()
	return func() int { return int(m.Load()) }, func() { close(done); wg.Wait() }
}

func TestSweepFleetWindowRestartPacingAndContinueAsNew(t *testing.T) {
	s := servicetest.New(t)
	const n = 300
	drifted := func(i int) bool { return i%10 == 3 }
	boxes := fleetOf(t, s, "ws-sweep", n, drifted)
	for _, b := range boxes {
		require.NoError(t, b.SetRestartDelay(300*time.Millisecond))
	}

	running := `WorkflowType = "ReconcileWorkspace" AND ExecutionStatus = "Running"`
	maxInFlight, stopInFlight := sample(50*time.Millisecond, func() int {
		resp, err := s.Client.CountWorkflow(context.Background(), &workflowservice.CountWorkflowExecutionsRequest{Query: running})
		if err != nil {
			return 0
		}
		return int(resp.GetCount())
	})
	maxRestarting, stopRestarting := sample(20*time.Millisecond, restarting(boxes))

	run, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{MaxConcurrency: 20, MaxRestartsInFlight: 3, PageSize: 50, MaxPerRun: 100})
	require.NoError(t, err)
	// A second sweep started meanwhile joins the first.
	again, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{})
	require.NoError(t, err)
	require.Equal(t, run.GetRunID(), again.GetRunID())

	// 300 reconciles take about three minutes on two cores, and more when
	// other packages' tests share them.
	long, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var rep workflows.SweepReport
	require.NoError(t, s.Client.GetWorkflow(long, workflows.SweepWorkflowID, "").Get(long, &rep))
	stopInFlight()
	stopRestarting()

	require.Equal(t, n, rep.Checked)
	require.Equal(t, n/10, rep.Missing)
	require.Equal(t, 0, rep.Stale)
	require.Equal(t, n/10, rep.Delivered)
	require.Equal(t, n/10, rep.Restarts)
	require.Zero(t, rep.Failures, "%v", rep.Failed)
	// Three runs of 100 workspaces, and a fourth that finds no more.
	require.Equal(t, 4, rep.Runs, "continued as new every 100 workspaces")
	for i, b := range boxes {
		want := 0
		if drifted(i) {
			want = 1
		}
		require.Equal(t, want, b.Restarts(), "box %d", i)
	}
	t.Logf("measured: at most %d reconciles in flight (window 20), at most %d boxes restarting (limit 3)", maxInFlight(), maxRestarting())
	require.LessOrEqual(t, maxInFlight(), 20)
	require.Greater(t, maxInFlight(), 1, "the window was used")
	require.LessOrEqual(t, maxRestarting(), 3)
}

// Every box needs a slow restart at once: without the permits up to 12
// would restart together; with them, at most 3.
func TestSweepPacesRestarts(t *testing.T) {
	s := servicetest.New(t)
	boxes := fleetOf(t, s, "ws-pace", 12, func(int) bool { return true })
	for _, b := range boxes {
		require.NoError(t, b.SetRestartDelay(time.Second))
	}
	maxRestarting, stop := sample(20*time.Millisecond, restarting(boxes))
	run, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{MaxConcurrency: 12, MaxRestartsInFlight: 3})
	require.NoError(t, err)
	var rep workflows.SweepReport
	require.NoError(t, run.Get(ctx(t), &rep))
	stop()
	require.Equal(t, 12, rep.Restarts)
	for _, b := range boxes {
		require.Equal(t, 1, b.Restarts())
	}
	t.Logf("measured: at most %d of 12 boxes restarting at once (limit 3)", maxRestarting())
	require.LessOrEqual(t, maxRestarting(), 3)
	require.GreaterOrEqual(t, maxRestarting(), 2, "the restarts did overlap, up to the limit")
}

func TestSweepStopsAtTheErrorBudget(t *testing.T) {
	s := servicetest.New(t)
	boxes := fleetOf(t, s, "ws-budget", 30, func(int) bool { return false })
	broken := map[string]bool{}
	for i, b := range boxes {
		if i%3 == 0 {
			s.Fleet.AWS.SetState(b.InstanceID, "stopped")
			broken[fmt.Sprintf("ws-budget-%03d", i)] = true
		}
	}
	run, err := workflows.StartSweep(ctx(t), s.Client, workflows.SweepInput{MaxConcurrency: 4, MaxErrors: 5})
	require.NoError(t, err)
	var rep workflows.SweepReport
	require.NoError(t, run.Get(ctx(t), &rep))
	require.True(t, rep.Stopped)
	require.Contains(t, rep.StopReason, "more than the budget of 5")
	require.Greater(t, rep.Failures, 5)
	require.Less(t, rep.Checked+rep.Failures, 30, "no new reconcile after the budget")
	require.Len(t, rep.Failed, rep.Failures)
	for _, f := range rep.Failed {
		ws := f[:len("ws-budget-000")]
		require.True(t, broken[ws], "%s is named as failed but is not broken", f)
		require.Contains(t, f, "plugins failed")
	}
}

func TestSweepScheduleIsCreatedOnce(t *testing.T) {
	s := servicetest.New(t)
	created, err := workflows.EnsureSchedule(ctx(t), s.Client, 6*time.Hour, workflows.SweepInput{MaxConcurrency: 20})
	require.NoError(t, err)
	require.True(t, created)
	created, err = workflows.EnsureSchedule(ctx(t), s.Client, 2*time.Hour, workflows.SweepInput{MaxConcurrency: 10})
	require.NoError(t, err)
	require.False(t, created, "the second call updates")

	iter, err := s.Client.ScheduleClient().List(ctx(t), client.ScheduleListOptions{})
	require.NoError(t, err)
	ids := 0
	for iter.HasNext() {
		e, err := iter.Next()
		require.NoError(t, err)
		if e.ID == workflows.SweepScheduleID {
			ids++
		}
	}
	require.Equal(t, 1, ids)
	d, err := s.Client.ScheduleClient().GetHandle(ctx(t), workflows.SweepScheduleID).Describe(ctx(t))
	require.NoError(t, err)
	require.Equal(t, 2*time.Hour, d.Schedule.Spec.Intervals[0].Every)
}

// restarting counts the boxes restarting right now, for sample.
func restarting(boxes []*fleet.Box) func() int {
	return func() int {
		c := 0
		for _, b := range boxes {
			if b.Restarting() {
				c++
			}
		}
		return c
	}
}
