package faults

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"

	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet"
	"github.com/plugin-reconciler/plugin-reconciler/internal/fleet/fleettest"
	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// A pool of worker processes: each reconcile's box work goes to one
// worker, so a box sees one key push and one SSH handshake whatever the
// pool's size; when a worker dies or drains, its boxes' work moves on.

// pool starts workers until n serve, and waits until Temporal sees them
// all polling.
func (h *harness) pool(n int) {
	for h.serving() < n {
		h.startWorker()
	}
	require.Eventually(h.t, func() bool {
		d, err := h.client.DescribeTaskQueue(ctx(h.t), workflows.TaskQueue, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
		return err == nil && len(d.GetPollers()) >= n
	}, 2*time.Minute, 100*time.Millisecond, "the pool never polled")
}

// signalOne sends one serving worker sig (SIGKILL: a crash; SIGTERM: a
// deploy's drain) and returns at once.
func (h *harness) signalOne(sig syscall.Signal) *workerProc {
	h.workerMu.Lock()
	w := h.workers[0]
	h.workers = h.workers[1:]
	if sig == syscall.SIGTERM {
		h.draining = append(h.draining, w)
	}
	h.workerMu.Unlock()
	if sig == syscall.SIGKILL {
		_ = syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
		<-w.done
	} else {
		_ = w.cmd.Process.Signal(sig)
	}
	return w
}

// freshFleet boots n workspaces that each miss one plugin: each needs one
// delivery and one restart.
func (h *harness) freshFleet(prefix string, n int) map[string]*fleet.Box {
	boxes := map[string]*fleet.Box{}
	for i := range n {
		ws := fmt.Sprintf("%s-%02d", prefix, i)
		boxes[ws] = h.box(ws, all(declared[i%len(declared)].Name))
	}
	return boxes
}

// reconcileAll triggers every workspace and waits for every run.
func (h *harness) reconcileAll(boxes map[string]*fleet.Box, during func()) {
	for ws := range boxes {
		h.start(ws, declared)
	}
	if during != nil {
		during()
	}
	for ws, b := range boxes {
		_, err := h.wait(ws, 5*time.Minute)
		require.NoError(h.t, err, ws)
		h.checkBox(ws, b, declared, 1)
		events, err := b.Events()
		require.NoError(h.t, err)
		require.NoError(h.t, fleettest.CheckRestarts(events), ws)
	}
}

func logins(boxes map[string]*fleet.Box) (total, most int) {
	for _, b := range boxes {
		total += b.Logins()
		most = max(most, b.Logins())
	}
	return total, most
}

func TestPoolOfThreeDialsEachBoxOnce(t *testing.T) {
	h := newHarness(t)
	h.pool(3)
	const n = 20
	boxes := h.freshFleet("pool", n)
	pushesBefore := h.aws.Calls("SendSSHPublicKey")
	h.reconcileAll(boxes, nil)
	pushes := h.aws.Calls("SendSSHPublicKey") - pushesBefore
	total, most := logins(boxes)
	t.Logf("3 workers, %d fresh workspaces: %.2f key pushes and %.2f SSH handshakes per workspace (most on one box: %d)", n, float64(pushes)/n, float64(total)/n, most)
	require.LessOrEqual(t, pushes, n, "at most one key push per workspace")
	require.LessOrEqual(t, total, n, "at most one handshake per workspace")
	record("3 worker processes, 20 fresh workspaces (one delivery each)",
		fmt.Sprintf("%.2f key pushes and %.2f SSH handshakes per workspace", float64(pushes)/n, float64(total)/n),
		"≤ 1.00 push and ≤ 1.00 handshake per workspace; every box restarted exactly once; rows exact")
}

// One of three workers crashes while the reconciles run, on the production
// shape: its boxes' work waits out the schedule-to-start timeout on its
// queue, then moves to the worker the rendezvous picks next; a box re-dials
// at most once more.
func TestProductionShapedWorkerKilledMidRun(t *testing.T) {
	h := newHarnessWith(t, true)
	h.pool(3)
	const n = 12
	boxes := h.freshFleet("kill", n)
	for _, b := range boxes {
		b.SetLatency(100 * time.Millisecond) // keeps the runs in flight
	}
	var killedAt time.Duration
	start := time.Now()
	h.reconcileAll(boxes, func() {
		require.Eventually(t, func() bool { total, _ := logins(boxes); return total >= n/2 }, 2*time.Minute, 5*time.Millisecond)
		h.signalOne(syscall.SIGKILL)
		killedAt = time.Since(start)
	})
	total, most := logins(boxes)
	t.Logf("killed one of 3 workers at %s: %d handshakes for %d workspaces, at most %d on one box", killedAt.Round(time.Millisecond), total, n, most)
	require.LessOrEqual(t, most, 2, "a box re-dials at most once more")
	record("production shape: one of 3 workers SIGKILLed mid-run (12 workspaces)",
		fmt.Sprintf("killed at %s; every run completed in %s; %d handshakes for %d workspaces", killedAt.Round(time.Millisecond), time.Since(start).Round(time.Second), total, n),
		"every box restarted exactly once; at most 2 handshakes on any box; rows exact")
}

// One of three workers drains (SIGTERM, a deploy) while the reconciles
// run, on the production shape: what it started it finishes, what waits on
// its queue moves on.
func TestProductionShapedWorkerDrainedMidRun(t *testing.T) {
	h := newHarnessWith(t, true)
	h.pool(3)
	const n = 12
	boxes := h.freshFleet("drain", n)
	for _, b := range boxes {
		b.SetLatency(100 * time.Millisecond)
	}
	var drained *workerProc
	h.reconcileAll(boxes, func() {
		require.Eventually(t, func() bool { total, _ := logins(boxes); return total >= n/2 }, 2*time.Minute, 5*time.Millisecond)
		drained = h.signalOne(syscall.SIGTERM)
	})
	select {
	case <-drained.done:
	case <-time.After(2 * time.Minute):
		t.Fatal("the drained worker did not exit")
	}
	total, most := logins(boxes)
	require.LessOrEqual(t, most, 2, "a box re-dials at most once more")
	record("production shape: one of 3 workers SIGTERMed (drained) mid-run (12 workspaces)",
		fmt.Sprintf("the drained worker exited; every run completed; %d handshakes for %d workspaces", total, n),
		"nothing lost, every box restarted exactly once; at most 2 handshakes on any box; rows exact")
}
