package workflows

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/testsuite"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// declaredModel is a box holding a..e, all tracked and declared (generation
// 1, observed).
func declaredModel() *model {
	m := newModel(allOnBox())
	m.declared, m.generation, m.observed = reconcile.Declare(nil, five(), false), 1, 1
	for _, p := range five() {
		m.tracked[p.Name] = p.Version
	}
	return m
}

func byName(res ReconcileResult) map[string]PluginResult {
	out := map[string]PluginResult{}
	for _, p := range res.Plugins {
		out[p.Name] = p
	}
	return out
}

func TestPruneRemovesWhatIsNoLongerDeclared(t *testing.T) {
	m := declaredModel()
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:4], Prune: true}, nil)
	require.NoError(t, err)
	require.NotContains(t, m.onBox, "e", "e is off the box")
	require.NotContains(t, m.tracked, "e", "and its row gone")
	require.Len(t, m.tracked, 4)
	require.Equal(t, 1, m.restarts, "a removal is a change: one restart")
	require.Equal(t, ActionRemoved, byName(res)["e"].Action)
	require.True(t, byName(res)["e"].Changed)
	require.Contains(t, res.Restart.Reason, "0 plugin(s) delivered, 1 removed")
	require.Contains(t, res.Summary, "4 recorded, 0 delivered, 1 removed")
	require.Equal(t, int64(2), m.generation)
	require.Equal(t, int64(2), m.observed, "reconciled in full")
	require.Equal(t, int64(2), res.ObservedGeneration)
}

func TestWithoutPruneNothingIsRemoved(t *testing.T) {
	m := declaredModel()
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:4]}, nil)
	require.NoError(t, err)
	require.Contains(t, m.onBox, "e")
	require.Zero(t, m.removals+m.restarts)
	require.Equal(t, 5, res.Count(ActionRecorded), "the whole stored set is reconciled")
	require.Equal(t, int64(1), m.generation, "the set did not change")
}

func TestDryRunWithPruneShowsWouldRemove(t *testing.T) {
	m := declaredModel()
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:3], Prune: true, DryRun: true}, nil)
	require.NoError(t, err)
	require.Equal(t, ActionWouldRemove, byName(res)["d"].Action)
	require.Equal(t, ActionWouldRemove, byName(res)["e"].Action)
	require.Zero(t, m.removals+m.forgets+m.restarts+m.records)
	require.Len(t, m.onBox, 5)
	require.Equal(t, int64(1), m.generation, "a plan writes no declaration")
	require.True(t, res.Restart.Needed)
	require.Contains(t, res.Summary, "2 to remove")
	require.True(t, res.drift())
}

func TestARemovalAndADeliveryShareOneRestart(t *testing.T) {
	m := declaredModel()
	delete(m.onBox, "a")
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:4], Prune: true}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, m.deliveries)
	require.Equal(t, 1, m.removals)
	require.Equal(t, 1, m.restarts)
	require.Equal(t, 1, res.RestartsDone())
	require.Contains(t, res.Restart.Reason, "1 plugin(s) delivered, 1 removed")
}

// A trigger that drops a plugin while the run is reconciling it is folded
// in before the restart decision: the plugin is removed in the same run,
// under the same single restart.
func TestAPruneSignalledMidRunIsFoldedIn(t *testing.T) {
	m := declaredModel()
	delete(m.onBox, "a")
	m.deliverTakes = time.Minute
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, func(env *testsuite.TestWorkflowEnvironment) {
		env.RegisterDelayedCallback(func() {
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: five()[:3], Prune: true})
		}, 10*time.Second)
	})
	require.NoError(t, err)
	require.Equal(t, []Plugin{five()[0], five()[1], five()[2]}, m.declared)
	require.NotContains(t, m.onBox, "d")
	require.NotContains(t, m.onBox, "e")
	require.Equal(t, "1.0.0", m.onBox["a"], "the delivery under way finished")
	require.Equal(t, 1, m.restarts, "one restart for the delivery and both removals")
	require.Equal(t, ActionRemoved, byName(res)["d"].Action)
	require.Equal(t, m.generation, m.observed)
}

// A sweep's reconcile converges to the declaration as stored: what the
// sweep listed earlier does not bring back a plugin pruned meanwhile.
func TestConvergeKeepsTheStoredDeclaration(t *testing.T) {
	m := declaredModel()
	m.declared, m.owed, m.generation = five()[:4], []string{"e"}, 2 // e was pruned after the sweep listed the workspace
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), Converge: true}, nil)
	require.NoError(t, err)
	require.Equal(t, five()[:4], m.declared)
	require.Equal(t, ActionRemoved, byName(res)["e"].Action)
	require.NotContains(t, m.onBox, "e")
	require.Equal(t, int64(2), m.observed)
}

// A plugin whose delivery failed keeps the generation unobserved: the
// workspace stays behind its declaration, and the next reconcile (a sweep)
// tries it again.
func TestAFailedPluginLeavesTheGenerationUnobserved(t *testing.T) {
	m := newModel(allOnBox())
	delete(m.onBox, "e")
	m.failDeliver["e"] = true
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.Error(t, err)
	require.Equal(t, int64(1), m.generation)
	require.Zero(t, m.observed)
	require.True(t, res.drift())

	m.failDeliver["e"] = false // published
	res, err = runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:1], Converge: true}, nil)
	require.NoError(t, err)
	require.Equal(t, ActionDelivered, byName(res)["e"].Action)
	require.Equal(t, 1, res.RestartsDone())
	require.Equal(t, int64(1), m.observed)
	require.False(t, res.drift())
}

// A declaration that arrives while the run observes its generation (its
// last wait) is not dropped by the run's end: it makes a round of its own.
func TestADeclarationDuringTheObserveIsNotLost(t *testing.T) {
	m := declaredModel()
	delete(m.onBox, "a")
	m.onBox["g"] = "1.0.0"
	m.observeTakes = time.Minute
	f, g := Plugin{Name: "f", Version: "1.0.0"}, Plugin{Name: "g", Version: "1.0.0"}
	_, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: append(five(), g)}, func(env *testsuite.TestWorkflowEnvironment) {
		env.RegisterDelayedCallback(func() {
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: []Plugin{f}})
		}, 30*time.Second)
	})
	require.NoError(t, err)
	require.Contains(t, m.declared, f, "the declaration was recorded")
	require.Equal(t, "1.0.0", m.onBox["f"], "and delivered")
	require.Equal(t, 2, m.restarts, "a round of its own, with its own restart")
	require.Equal(t, m.generation, m.observed)
}

// A declaration that arrives while the run records one that changes
// nothing is taken too: the run looks again before it ends.
func TestADeclarationDuringARecordThatChangesNothingIsNotLost(t *testing.T) {
	m := declaredModel()
	delete(m.onBox, "a")
	m.restartTakes, m.recordTakes = time.Minute, time.Minute
	f := Plugin{Name: "f", Version: "1.0.0"}
	_, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, func(env *testsuite.TestWorkflowEnvironment) {
		env.RegisterDelayedCallback(func() { // during the restart: changes nothing
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: five()[:2]})
		}, 90*time.Second)
		env.RegisterDelayedCallback(func() { // during that declaration's record
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: []Plugin{f}})
		}, 150*time.Second)
	})
	require.NoError(t, err)
	require.Contains(t, m.declared, f)
	require.Equal(t, "1.0.0", m.onBox["f"])
	require.Equal(t, 2, m.restarts)
	require.Equal(t, m.generation, m.observed)
}

// A removal an earlier attempt made (it renamed the plugin and died) is
// found already done by the retry; the round still counts it, so the
// restart it owes is decided from the box, and a round whose restart state
// could not be read does not observe the generation.
func TestARemovalFoundDoneStillCountsAsAChange(t *testing.T) {
	m := declaredModel()
	delete(m.onBox, "e") // an earlier attempt removed it
	m.marks["e"] = m.identity
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:4], Prune: true}, nil)
	require.NoError(t, err)
	require.Equal(t, ActionRemoved, byName(res)["e"].Action)
	require.False(t, byName(res)["e"].Changed)
	require.Equal(t, 1, m.restarts, "the journal owes it")
	require.Contains(t, res.Restart.Reason, "1 removed")
}

// A converge trigger (the starter without --plugin, read before a Prune
// was recorded) that joins the running Prune reconcile declares nothing:
// it brings back no plugin the Prune dropped.
func TestAConvergeTriggerDoesNotUndoAPrune(t *testing.T) {
	m := declaredModel()
	m.deliverTakes = time.Minute
	delete(m.onBox, "a")
	_, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()[:3], Prune: true}, func(env *testsuite.TestWorkflowEnvironment) {
		env.RegisterDelayedCallback(func() {
			env.SignalWorkflow(SignalDeclare, ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), Converge: true}.declaration())
		}, 10*time.Second)
	})
	require.NoError(t, err)
	require.Equal(t, five()[:3], m.declared)
	require.NotContains(t, m.onBox, "d")
	require.NotContains(t, m.onBox, "e")
	require.Equal(t, m.generation, m.observed)
}

// A child of a sweep started before sweeps said Converge (RestartGate set,
// Converge not) converges too: the plugins that sweep listed earlier do
// not bring back one pruned since.
func TestAnOldSweepsChildConverges(t *testing.T) {
	m := declaredModel()
	m.declared, m.generation, m.observed = five()[:4], 2, 2 // e pruned and removed after the sweep listed the workspace
	delete(m.onBox, "e")
	delete(m.tracked, "e")
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), RestartGate: "sweep-fleet"}, nil)
	require.NoError(t, err)
	require.Equal(t, five()[:4], m.declared)
	require.NotContains(t, m.onBox, "e")
	require.Zero(t, m.deliveries+m.restarts)
	require.Equal(t, 4, res.Count(ActionRecorded))
}
