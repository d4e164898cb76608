package workflows

import (
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
