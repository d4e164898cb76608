package workflows

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// A reconcile sends its box work to the worker it picked: every probe runs
// on that worker's own queue.
func TestBoxWorkGoesToThePickedWorker(t *testing.T) {
	m := newModel(allOnBox())
	m.claim = func(reconcile.ClaimInput) string { return reconcile.BoxQueue("w1") }
	_, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Len(t, m.claims, 1, "one pick for the run")
	require.Len(t, m.probeQueues, 5)
	for _, q := range m.probeQueues {
		require.Equal(t, reconcile.BoxQueue("w1"), q)
	}
}

// The picked worker is gone: a probe sits on its queue past the
// schedule-to-start timeout; the child avoids that queue, picks again and
// the probe runs on the next worker.
func TestBoxWorkMovesWhenItsWorkerIsGone(t *testing.T) {
	m := newModel(allOnBox())
	dead, next := reconcile.BoxQueue("w1"), reconcile.BoxQueue("w2")
	m.dead = map[string]bool{dead: true}
	m.claim = func(in reconcile.ClaimInput) string {
		if slices.Contains(in.Avoid, dead) {
			return next
		}
		return dead
	}
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, 5, res.Count(ActionRecorded))
	require.Len(t, m.probeQueues, 5)
	for _, q := range m.probeQueues {
		require.Equal(t, next, q)
	}
	for _, c := range m.claims[1:] {
		require.Equal(t, []string{dead}, c.Avoid, "a re-pick avoids the dead queue")
	}
}

// Routing never stops a reconcile: when every worker picked keeps its
// tasks waiting past the timeout (gone, or swamped), the activity runs on
// the shared queue after maxRepicks moves.
func TestBoxWorkFallsBackToTheSharedQueue(t *testing.T) {
	m := newModel(allOnBox())
	m.dead = map[string]bool{}
	m.claim = func(in reconcile.ClaimInput) string {
		q := reconcile.BoxQueue(fmt.Sprint("w", len(in.Avoid)))
		m.dead[q] = true
		return q
	}
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:1]}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, res.Count(ActionRecorded))
	require.Len(t, m.probeQueues, 1)
	require.False(t, m.dead[m.probeQueues[0]], "the probe ran on the shared queue: %s", m.probeQueues[0])
	require.Len(t, m.claims, 1+maxRepicks, "the run's pick, then one per move")
}

// A pick that fails does not fail the run: its box work goes to the shared
// queue.
func TestAFailedPickDoesNotStopTheRun(t *testing.T) {
	m := newModel(allOnBox())
	m.claimFails = true
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, 5, res.Count(ActionRecorded))
	require.Len(t, m.claims, 1)
}
