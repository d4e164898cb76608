package workflows

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/plugin-reconciler/plugin-reconciler/activities"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// model is a box and its store as the mocked activities see them.
type model struct {
	mu          sync.Mutex
	onBox       map[string]string // plugin -> version on the box
	failDeliver map[string]bool   // permanent delivery failure
	pending     *time.Time
	marks       map[string]string // plugin -> identity after swap
	identity    string

	deliverTakes, restartTakes, recordTakes, observeTakes time.Duration

	probes, deliveries, records, restarts, clears int
	recorded                                      map[string]string // plugin -> via
	tracked                                       map[string]string // plugin -> tracked version

	// Box routes: claim picks a worker's queue (nil: none, the shared
	// queue); claims are the picks asked for; probeQueues the queues the
	// probes ran on; dead queues time out before they start.
	claim       func(reconcile.ClaimInput) string
	claimFails  bool
	claims      []reconcile.ClaimInput
	probeQueues []string
	dead        map[string]bool

	// The stored declaration and the removals it owes.
	declared             []Plugin
	owed                 []string
	generation, observed int64
	removals, forgets    int
}

func newModel(onBox map[string]string) *model {
	return &model{onBox: onBox, failDeliver: map[string]bool{}, marks: map[string]string{}, identity: "run-1", recorded: map[string]string{}, tracked: map[string]string{}}
}

// declare is the store's Declare on the model.
func (m *model) declare(in reconcile.DeclareInput) reconcile.Declared {
	var stored *reconcile.Desired
	if m.generation > 0 {
		stored = &reconcile.Desired{Plugins: m.declared, Removals: m.owed}
	}
	var tracked []Plugin
	for name, v := range m.tracked {
		tracked = append(tracked, Plugin{Name: name, Version: v})
	}
	slices.SortFunc(tracked, func(a, b Plugin) int { return strings.Compare(a.Name, b.Name) })
	next := reconcile.NextDesired(stored, tracked, in)
	declared, owed, generation := m.declared, m.owed, m.generation
	if stored == nil || !slices.Equal(next.Plugins, declared) || !slices.Equal(next.Removals, owed) {
		declared, owed, generation = next.Plugins, next.Removals, generation+1
	}
	d := reconcile.Declared{Workspace: ws, Generation: generation, Observed: m.observed, Plugins: declared}
	for _, name := range owed {
		d.Undeclared = append(d.Undeclared, Plugin{Name: name, Version: m.tracked[name]})
	}
	if !in.DryRun {
		m.declared, m.owed, m.generation = declared, owed, generation
	}
	return d
}

var ws = reconcile.Box{ID: "ws-1", InstanceID: "i-0123456789abcdef0", OSUser: "ubuntu", PluginRoot: "/opt/agent/plugins"}

func (m *model) register(env *testsuite.TestWorkflowEnvironment) {
	env.RegisterWorkflow(ReconcilePlugin)
	// The worker's activities, by the names the workflows schedule them
	// under; each is mocked below.
	env.RegisterActivity(&activities.Activities{})
	env.OnActivity(reconcile.ActivityLoadWorkspace, mock.Anything, mock.Anything).Return(func(_ context.Context, id string) (reconcile.Box, error) {
		if id != ws.ID {
			return reconcile.Box{}, temporal.NewNonRetryableApplicationError("workspace "+id+" is not registered", reconcile.ErrUnknownWorkspace, nil)
		}
		return ws, nil
	}).Maybe()
	env.OnActivity(reconcile.ActivityClaimBoxQueue, mock.Anything, mock.Anything).Return(func(_ context.Context, in reconcile.ClaimInput) (reconcile.BoxRoute, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.claims = append(m.claims, in)
		if m.claimFails {
			return reconcile.BoxRoute{}, temporal.NewNonRetryableApplicationError("no view of the pool", "Unavailable", nil)
		}
		if m.claim == nil {
			return reconcile.BoxRoute{}, nil
		}
		return reconcile.BoxRoute{TaskQueue: m.claim(in)}, nil
	}).Maybe()
	record := env.OnActivity(reconcile.ActivityRecordDeclaration, mock.Anything, mock.Anything)
	if m.recordTakes > 0 {
		record = record.After(m.recordTakes)
	}
	record.Return(func(_ context.Context, in reconcile.DeclareInput) (reconcile.Declared, error) {
		if in.WorkspaceID != ws.ID {
			return reconcile.Declared{}, temporal.NewNonRetryableApplicationError("workspace "+in.WorkspaceID+" is not registered", reconcile.ErrUnknownWorkspace, nil)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.declare(in), nil
	}).Maybe()
	observe := env.OnActivity(reconcile.ActivityObserveDeclaration, mock.Anything, mock.Anything)
	if m.observeTakes > 0 {
		observe = observe.After(m.observeTakes)
	}
	observe.Return(func(_ context.Context, in reconcile.ObserveInput) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.observed = max(m.observed, in.Generation)
		return nil
	}).Maybe()
	env.OnActivity(reconcile.ActivityRemoveViaEIC, mock.Anything, mock.Anything).Return(func(_ context.Context, in reconcile.RemoveInput) (reconcile.Removal, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.removals++
		if _, ok := m.onBox[in.Plugin]; !ok {
			return reconcile.Removal{}, nil
		}
		delete(m.onBox, in.Plugin)
		m.marks[in.Plugin] = m.identity
		return reconcile.Removal{Changed: true}, nil
	}).Maybe()
	env.OnActivity(reconcile.ActivityForgetTracking, mock.Anything, mock.Anything).Return(func(_ context.Context, in reconcile.TrackInput) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.forgets++
		delete(m.tracked, in.Plugin)
		m.owed = slices.DeleteFunc(m.owed, func(n string) bool { return n == in.Plugin })
		return nil
	}).Maybe()
	env.OnActivity(reconcile.ActivityProbeManifest, mock.Anything, mock.Anything).Return(func(ctx context.Context, in reconcile.ProbeInput) (reconcile.Probe, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		q := activity.GetInfo(ctx).TaskQueue
		if m.dead[q] {
			return reconcile.Probe{}, temporal.NewTimeoutError(enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START, nil)
		}
		m.probes++
		m.probeQueues = append(m.probeQueues, q)
		v, ok := m.onBox[in.Plugin]
		if !ok {
			return reconcile.Probe{Reason: "no manifest on the box"}, nil
		}
		return reconcile.Probe{Present: true, Version: v, Reason: "manifest found"}, nil
	}).Maybe()
	deliver := env.OnActivity(reconcile.ActivityDeliverViaEIC, mock.Anything, mock.Anything)
	if m.deliverTakes > 0 {
		deliver = deliver.After(m.deliverTakes)
	}
	deliver.Return(func(_ context.Context, in reconcile.DeliverInput) (reconcile.Delivery, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.failDeliver[in.Plugin] {
			return reconcile.Delivery{}, temporal.NewNonRetryableApplicationError("bundle for "+in.Plugin+" rejected", reconcile.ErrBundleRejected, nil)
		}
		m.deliveries++
		now := time.Now()
		if m.pending == nil {
			m.pending = &now
		}
		m.onBox[in.Plugin] = in.Version
		m.marks[in.Plugin] = m.identity
		return reconcile.Delivery{Digest: "sha256:" + in.Plugin, Changed: true}, nil
	}).Maybe()
	env.OnActivity(reconcile.ActivityRecordTracking, mock.Anything, mock.Anything).Return(func(_ context.Context, in reconcile.TrackInput) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.records++
		m.recorded[in.Plugin] = in.Via
		m.tracked[in.Plugin] = in.Version
		return nil
	}).Maybe()
	env.OnActivity(reconcile.ActivityReadRestartFacts, mock.Anything, mock.Anything).Return(func(_ context.Context, _ reconcile.Box) (reconcile.RestartFacts, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		// The box's journal: one line per swap, with the runtime it
		// happened under.
		f := reconcile.RestartFacts{PendingSince: m.pending, CurrentIdentity: m.identity, JournalRead: true}
		for name, id := range m.marks {
			f.MarkIdentities = append(f.MarkIdentities, id)
			f.Journal = append(f.Journal, reconcile.JournalEntry{Plugin: name, Identity: id})
		}
		return f, nil
	}).Maybe()
	restartBox := env.OnActivity(reconcile.ActivityRestartBox, mock.Anything, mock.Anything)
	if m.restartTakes > 0 {
		restartBox = restartBox.After(m.restartTakes)
	}
	restartBox.Return(func(_ context.Context, in reconcile.RestartInput) (reconcile.RestartOutcome, error) {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.restarts++
		before := m.identity
		m.identity = before + "+"
		m.pending, m.marks = nil, map[string]string{}
		return reconcile.RestartOutcome{Mode: "runtime", IdentityBefore: before, IdentityAfter: m.identity, Restarted: true, RestartIDs: []string{fmt.Sprint("r", m.restarts)}}, nil
	}).Maybe()
	env.OnActivity(reconcile.ActivityClearRestartPending, mock.Anything, mock.Anything).Return(func(_ context.Context, _ reconcile.ClearInput) error {
		m.mu.Lock()
		defer m.mu.Unlock()
		m.clears++
		m.pending, m.marks = nil, map[string]string{}
		return nil
	}).Maybe()
}

func five() []Plugin {
	return []Plugin{{Name: "a", Version: "1.0.0"}, {Name: "b", Version: "1.0.0"}, {Name: "c", Version: "1.0.0"}, {Name: "d", Version: "1.0.0"}, {Name: "e", Version: "1.0.0"}}
}

func allOnBox() map[string]string {
	return map[string]string{"a": "1.0.0", "b": "1.0.0", "c": "1.0.0", "d": "1.0.0", "e": "1.0.0"}
}

func runReconcile(t *testing.T, m *model, in ReconcileInput, setup func(*testsuite.TestWorkflowEnvironment)) (ReconcileResult, error) {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	m.register(env)
	if setup != nil {
		setup(env)
	}
	env.ExecuteWorkflow(ReconcileWorkspace, in)
	require.True(t, env.IsWorkflowCompleted())
	err := env.GetWorkflowError()
	var res ReconcileResult
	if err == nil {
		require.NoError(t, env.GetWorkflowResult(&res))
	} else {
		var app *temporal.ApplicationError
		var cancelled *temporal.CanceledError
		switch {
		case errors.As(err, &app) && app.HasDetails():
			require.NoError(t, app.Details(&res))
		case errors.As(err, &cancelled) && cancelled.HasDetails():
			require.NoError(t, cancelled.Details(&res))
		}
	}
	return res, err
}

func TestAllPresentRecordsOnly(t *testing.T) {
	m := newModel(allOnBox())
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, 0, m.deliveries)
	require.Equal(t, 0, m.restarts)
	require.Equal(t, 5, m.records)
	require.Equal(t, 5, res.Count(ActionRecorded))
	require.False(t, res.Restart.Needed)
	require.Contains(t, res.Restart.Reason, "5 plugin(s) already on the box")
	for _, via := range m.recorded {
		require.Equal(t, reconcile.ViaBoot, via)
	}
}

func TestMissingPluginsDeliveredWithOneRestart(t *testing.T) {
	box := allOnBox()
	delete(box, "b")
	delete(box, "d")
	m := newModel(box)
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), MaxParallel: 2}, nil)
	require.NoError(t, err)
	require.Equal(t, 2, m.deliveries)
	require.Equal(t, 1, m.restarts)
	require.Equal(t, 5, m.records)
	require.Equal(t, 3, res.Count(ActionRecorded))
	require.Equal(t, 2, res.Count(ActionDelivered))
	require.True(t, res.Restart.Done)
	require.Contains(t, res.Restart.Reason, "2 plugin(s) delivered")
	require.Equal(t, reconcile.ViaReconcile, m.recorded["b"])
	require.Equal(t, reconcile.ViaBoot, m.recorded["a"])
}

func TestStaleVersionDeliveredAndRestarted(t *testing.T) {
	box := allOnBox()
	box["c"] = "0.9.0"
	m := newModel(box)
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, 1, m.deliveries)
	require.Equal(t, 1, m.restarts)
	for _, p := range res.Plugins {
		if p.Name == "c" {
			require.Equal(t, ActionDelivered, p.Action)
			require.Contains(t, p.Reason, "stale: box has 0.9.0")
		}
	}
}

func TestRestartOwedFromAnEarlierRun(t *testing.T) {
	m := newModel(allOnBox())
	earlier := time.Now().Add(-time.Hour)
	m.pending = &earlier
	m.marks["a"] = m.identity
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, 0, m.deliveries)
	require.Equal(t, 1, m.restarts)
	require.Contains(t, res.Restart.Reason, "restart still owed")
	require.Nil(t, m.pending)
}

func TestNoRestartWhenRuntimeAlreadyRestarted(t *testing.T) {
	m := newModel(allOnBox())
	earlier := time.Now().Add(-time.Hour)
	m.pending = &earlier
	m.marks["a"] = "run-0" // the runtime has restarted since ("run-1" now)
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, 0, m.restarts)
	require.Equal(t, 1, m.clears)
	require.Contains(t, res.Restart.Reason, "already restarted")
	require.False(t, res.Restart.Done)
}

func TestOnePluginFailsTheOthersStillReconciled(t *testing.T) {
	box := allOnBox()
	delete(box, "b")
	delete(box, "e")
	m := newModel(box)
	m.failDeliver["e"] = true
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	var app *temporal.ApplicationError
	require.ErrorAs(t, err, &app)
	require.Equal(t, ErrPluginsFailed, app.Type())
	require.Contains(t, err.Error(), "failed: e")
	require.Equal(t, []string{"e"}, res.Failed)
	require.Equal(t, 1, m.deliveries, "b delivered")
	require.Equal(t, 1, m.restarts, "what was delivered still gets its restart")
	require.Equal(t, 4, m.records)
	for _, p := range res.Plugins {
		if p.Name == "e" {
			require.Equal(t, ActionFailed, p.Action)
			require.Contains(t, p.Error, "bundle for e rejected")
		}
	}
}

func TestInvalidInputFailsAtOnce(t *testing.T) {
	m := newModel(allOnBox())
	_, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: []Plugin{{Name: "../etc", Version: "1"}}}, nil)
	var app *temporal.ApplicationError
	require.ErrorAs(t, err, &app)
	require.Equal(t, reconcile.ErrInvalidInput, app.Type())
	require.True(t, app.NonRetryable())
	require.Contains(t, err.Error(), "Plugins[0].Name")
	require.Equal(t, 0, m.probes)
}

func TestUnknownWorkspaceFailsAtOnce(t *testing.T) {
	m := newModel(allOnBox())
	_, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-404", Plugins: five()}, nil)
	var app *temporal.ApplicationError
	require.ErrorAs(t, err, &app)
	require.Equal(t, reconcile.ErrUnknownWorkspace, app.Type())
	require.Equal(t, 0, m.probes)
}

func TestDryRunWritesNothing(t *testing.T) {
	box := allOnBox()
	delete(box, "a")
	m := newModel(box)
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), DryRun: true}, nil)
	require.NoError(t, err)
	require.Equal(t, 5, m.probes)
	require.Zero(t, m.records+m.deliveries+m.restarts+m.clears)
	require.Equal(t, 1, res.Count(ActionWouldDeliver))
	require.Equal(t, 4, res.Count(ActionWouldRecord))
	require.True(t, res.Restart.Needed)
	require.False(t, res.Restart.Done)
	require.Contains(t, res.Summary, "plan: 4 to record, 1 to deliver, restart yes")
}

func TestDeclarationDuringRunIsFoldedIn(t *testing.T) {
	box := allOnBox()
	delete(box, "a")
	m := newModel(box)
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, func(env *testsuite.TestWorkflowEnvironment) {
		env.RegisterDelayedCallback(func() {
			// Same set plus one new plugin, and one upgraded.
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: append(five()[1:], Plugin{Name: "a", Version: "1.0.0"}, Plugin{Name: "f", Version: "2.0.0"})})
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: []Plugin{{Name: "c", Version: "1.1.0"}}})
		}, 0)
	})
	require.NoError(t, err)
	require.Equal(t, 3, m.deliveries, "a, f and the upgraded c")
	require.Equal(t, 1, m.restarts, "one restart for the burst")
	require.Len(t, res.Plugins, 6)
	require.Equal(t, "2.0.0", m.onBox["f"])
	require.Equal(t, "1.1.0", m.onBox["c"])
}

func TestCancelStopsDeliveriesAndLeavesTheRestartPending(t *testing.T) {
	box := allOnBox()
	delete(box, "a")
	delete(box, "b")
	delete(box, "c")
	m := newModel(box)
	m.deliverTakes = time.Minute
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), MaxParallel: 1}, func(env *testsuite.TestWorkflowEnvironment) {
		env.RegisterDelayedCallback(env.CancelWorkflow, 90*time.Second)
	})
	var cancelled *temporal.CanceledError
	require.ErrorAs(t, err, &cancelled)
	require.Equal(t, OutcomeCancelled, res.Outcome)
	require.Equal(t, 0, m.restarts, "no restart after a cancel")
	require.LessOrEqual(t, m.deliveries, 2, "no delivery started after the cancel")
	require.Equal(t, 5-res.Count(ActionCancelled), res.Count(ActionDelivered)+res.Count(ActionRecorded))
	require.Positive(t, res.Count(ActionCancelled))
	require.Contains(t, res.Summary, "restart left pending")
}

func TestOutcomes(t *testing.T) {
	m := newModel(allOnBox())
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, OutcomeRecordedOnly, res.Outcome)

	box := allOnBox()
	delete(box, "a")
	res, err = runReconcile(t, newModel(box), ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, nil)
	require.NoError(t, err)
	require.Equal(t, OutcomeRestarted, res.Outcome)

	res, err = runReconcile(t, newModel(box), ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), DryRun: true}, nil)
	require.NoError(t, err)
	require.Equal(t, OutcomeDryRun, res.Outcome)
}

// A declaration that arrives while the box restarts is a round of its own:
// its delivery gets a restart after it.
func TestDeclarationDuringTheRestartGetsARoundOfItsOwn(t *testing.T) {
	box := allOnBox()
	delete(box, "a")
	m := newModel(box)
	m.restartTakes = time.Minute
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five()}, func(env *testsuite.TestWorkflowEnvironment) {
		env.RegisterDelayedCallback(func() {
			require.Equal(t, 0, m.restarts, "the signal lands during the first restart")
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: []Plugin{{Name: "b", Version: "2.0.0"}}})
		}, 30*time.Second)
	})
	require.NoError(t, err)
	require.Equal(t, 2, m.deliveries)
	require.Equal(t, 2, m.restarts, "one restart per round")
	require.Len(t, res.Restarts, 2)
	require.True(t, res.Restarts[0].Done)
	require.True(t, res.Restarts[1].Done)
	require.Equal(t, 2, res.RestartsDone())
	require.Equal(t, OutcomeRestarted, res.Outcome)
	require.Contains(t, res.Summary, "restarted 2 times")
}

// A plugin's child indexes the plugin's name, so a declaration of any size
// is searchable without the parent's value outgrowing Temporal's limit.
func TestLargeDeclarationsKeepSearchAttributesSmall(t *testing.T) {
	small, ok := indexedPluginNames(five())
	require.True(t, ok)
	require.Len(t, small, 5)
	many := make([]Plugin, MaxPlugins)
	for i := range many {
		many[i] = Plugin{Name: fmt.Sprintf("a-rather-long-plugin-name-%03d", i), Version: "1"}
	}
	_, ok = indexedPluginNames(many)
	require.False(t, ok, "300 names do not fit one value: the parent indexes none")
	names, _ := indexedPluginNames(many[:40])
	encoded := 2
	for _, n := range names {
		encoded += len(n) + 3
	}
	require.LessOrEqual(t, encoded, searchValueBudget)
}

// A permit the sweep grants after a round's wait has timed out is not
// taken by the next round as its own: each round waits for the permit of
// its own request.
func TestALatePermitIsNotTakenByTheNextRound(t *testing.T) {
	box := allOnBox()
	delete(box, "a")
	m := newModel(box)
	m.restartTakes = time.Minute
	var restartsAtGrant int
	res, err := runReconcile(t, m, ReconcileInput{WorkspaceID: "ws-1", Plugins: five(), RestartGate: "sweep-1"}, func(env *testsuite.TestWorkflowEnvironment) {
		env.OnSignalExternalWorkflow(mock.Anything, "sweep-1", "", SignalPermitRequest, mock.Anything).Return(nil)
		env.OnSignalExternalWorkflow(mock.Anything, "sweep-1", "", SignalPermitRelease, mock.Anything).Return(nil)
		// Round 1 waits permitWait for a permit that does not come, then
		// restarts anyway (a minute). During that restart the sweep's late
		// grant for round 1 arrives, and a declaration makes round 2.
		late := permitWait + 30*time.Second
		env.RegisterDelayedCallback(func() {
			env.SignalWorkflow(SignalPermit, PermitRequest{WorkflowID: "default-test-workflow-id", Seq: 1})
			env.SignalWorkflow(SignalDeclare, Declaration{Plugins: []Plugin{{Name: "b", Version: "2.0.0"}}})
		}, late)
		// Round 2's own permit comes ten minutes later.
		env.RegisterDelayedCallback(func() {
			m.mu.Lock()
			restartsAtGrant = m.restarts
			m.mu.Unlock()
			env.SignalWorkflow(SignalPermit, PermitRequest{WorkflowID: "default-test-workflow-id", Seq: 2})
		}, late+10*time.Minute)
	})
	require.NoError(t, err)
	require.Equal(t, 2, m.restarts)
	require.Equal(t, 1, restartsAtGrant, "round 2 waited for its own permit")
	require.Len(t, res.Restarts, 2)
}
