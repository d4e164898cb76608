package workflows

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Retry policies. Permanent failures are listed as non-retryable so that a
// wrong host key or a stopped box fails at once with its named error.
var (
	permanent = []string{
		reconcile.ErrInvalidInput, reconcile.ErrUnknownWorkspace, reconcile.ErrUnknownPlugin,
		reconcile.ErrHostKeyMismatch, reconcile.ErrInstanceNotRunning, reconcile.ErrUnknownInstance,
		reconcile.ErrBundleRejected, reconcile.ErrDigestMismatch,
	}
	boxRetry = &temporal.RetryPolicy{
		InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second,
		MaximumAttempts: 8, NonRetryableErrorTypes: permanent,
	}
	storeRetry = &temporal.RetryPolicy{
		InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second,
		MaximumAttempts: 20, NonRetryableErrorTypes: permanent,
	}
	// A restart owed must happen: retried until its schedule-to-close,
	// unless the command itself fails in a way retrying cannot mend (the
	// activity says so after a few attempts).
	restartRetry = &temporal.RetryPolicy{
		InitialInterval: 2 * time.Second, BackoffCoefficient: 2, MaximumInterval: 2 * time.Minute,
		NonRetryableErrorTypes: []string{reconcile.ErrHostKeyMismatch, reconcile.ErrUnknownInstance, reconcile.ErrInstanceNotRunning, reconcile.ErrRestartFailed},
	}
)

func withActivity(ctx workflow.Context, summary string, startToClose time.Duration, retry *temporal.RetryPolicy) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: startToClose,
		RetryPolicy:         retry,
		Summary:             summary,
	})
}

// ReconcileWorkspace makes a workspace's box hold its declared plugins:
// validate, load the box, fan out one ReconcilePlugin child per plugin
// (folding in declarations that arrive meanwhile), decide the restart from
// durable state and run it; a declaration that arrived during the restart
// makes a round of its own.
func ReconcileWorkspace(ctx workflow.Context, in ReconcileInput) (ReconcileResult, error) {
	if err := in.Validate(); err != nil {
		return ReconcileResult{}, temporal.NewNonRetryableApplicationError("invalid input: "+err.Error(), reconcile.ErrInvalidInput, nil)
	}
	r := &run{in: in, results: map[string]PluginResult{}, reconciled: map[string]Plugin{}, declarations: workflow.GetSignalChannel(ctx, SignalDeclare)}
	w, err := r.start(ctx)
	if err == nil {
		err = r.routeBox(ctx)
	}
	for {
		// Reconcile until no newer declaration is waiting, so that a burst
		// of triggers leads to one restart decision.
		for err == nil && !w.empty() {
			if r.reconcile(ctx, w); ctx.Err() != nil {
				return r.cancelled(ctx)
			}
			w, err = r.drain(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return r.cancelled(ctx)
			}
			return r.fail(ctx, err)
		}
		end, err := r.endRound(ctx)
		switch end {
		case roundCancelled:
			return r.cancelled(ctx)
		case roundFailed:
			return r.fail(ctx, err)
		}
		// A declaration that arrived during the restart (or while the
		// generation was observed) makes a round of its own; the run ends
		// only in the workflow task that found none waiting.
		if w, err = r.settle(ctx, end == roundNext); err == nil && w.empty() {
			return r.finish(ctx)
		}
	}
}

// settle observes the generation when the round reconciled it in full
// (observe: the round's restart state was read and acted on), then takes
// the declarations waiting, and again until none is: what they ask for is
// the next round's work. Every wait here is an activity, during which a
// new declaration may arrive; only the last look, which found none, is in
// the workflow task that finishes the run.
func (r *run) settle(ctx workflow.Context, observe bool) (work, error) {
	for {
		if observe && r.declared && !r.in.DryRun && r.count(ActionFailed) == 0 && r.observed < r.generation {
			// Every declared plugin is recorded or delivered, every one owed
			// a removal removed, and the restart is done.
			octx := withActivity(ctx, fmt.Sprintf("observe generation %d of %s", r.generation, r.ws.ID), 30*time.Second, storeRetry)
			if err := workflow.ExecuteActivity(octx, reconcile.ActivityObserveDeclaration, reconcile.ObserveInput{WorkspaceID: r.ws.ID, Generation: r.generation}).Get(ctx, nil); err != nil {
				return work{}, err
			}
			r.observed = r.generation
		}
		w, recorded, err := r.drainOnce(ctx)
		if err != nil || !w.empty() || !recorded {
			return w, err
		}
	}
}

// work is what a round reconciles: plugins to probe and record or
// deliver, and plugins to remove.
type work struct {
	plugins []Plugin
	remove  []Plugin
}

func (w work) empty() bool { return len(w.plugins) == 0 && len(w.remove) == 0 }

// start answers status queries, indexes the run, loads the box and, since
// declarations are kept, records the run's declaration; it returns the
// first round's work.
func (r *run) start(ctx workflow.Context) (work, error) {
	if err := workflow.SetQueryHandler(ctx, QueryStatus, func() (Status, error) { return r.status(), nil }); err != nil {
		return work{}, err
	}
	// Runs started before this version upsert their search attributes and
	// reconcile legacyMaxParallel plugins at a time. (One marker for both:
	// each version marker costs an action of its own.) Since: started by
	// Start, the run carries its initial search attributes from its start
	// (one upsert fewer); started otherwise (as a child), it sets them now.
	r.indexedAtStart = workflow.GetVersion(ctx, "start-indexed", workflow.DefaultVersion, 1) == 1
	if !r.indexedAtStart || !indexedAtStart(workflow.GetTypedSearchAttributes(ctx), r.in) {
		if err := r.search(ctx, initialSearch(r.in)...); err != nil {
			return work{}, err
		}
	}
	// Runs started before declarations were kept reconcile their input and
	// the declarations signalled to them, and keep nothing.
	r.declared = workflow.GetVersion(ctx, "declarations", workflow.DefaultVersion, 1) == 1
	if !r.declared {
		lctx := withActivity(ctx, "load workspace "+r.in.WorkspaceID, 30*time.Second, storeRetry)
		if err := workflow.ExecuteActivity(lctx, reconcile.ActivityLoadWorkspace, r.in.WorkspaceID).Get(ctx, &r.ws); err != nil {
			return work{}, err
		}
		return work{plugins: r.in.Plugins}, r.search(ctx, SearchInstanceID.ValueSet(r.ws.InstanceID))
	}
	d := r.in.declaration()
	// A trigger's own declaration comes with it as a signal, and others may
	// be waiting: one record for all of them.
	if next, ok := r.waiting(); ok {
		d = d.Then(next)
	}
	in := reconcile.DeclareInput{WorkspaceID: r.in.WorkspaceID, Plugins: d.Plugins, Prune: d.Prune, Converge: d.Converge, DryRun: r.in.DryRun}
	w, err := r.record(ctx, in)
	if err != nil {
		return work{}, err
	}
	return w, r.search(ctx, SearchInstanceID.ValueSet(r.ws.InstanceID))
}

// routeBox picks the worker for the box's work (see route.go); runs
// started before routes keep the shared queue.
func (r *run) routeBox(ctx workflow.Context) error {
	if workflow.GetVersion(ctx, "box-affinity", workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		return nil
	}
	q, err := claimBoxQueue(ctx, r.ws.ID, nil)
	if err != nil {
		// Routing saves dials; it never stops a reconcile.
		workflow.GetLogger(ctx).Warn("no worker picked for the box: its work goes to the shared queue", "workspace", r.ws.ID, "error", err)
		return nil
	}
	r.route = routeFor(r.ws.ID, q)
	return nil
}

// roundEnd is how a round ended.
type roundEnd int

const (
	roundNext      roundEnd = iota // go on with what was declared meanwhile, if anything
	roundLast                      // report now
	roundCancelled                 // the run was cancelled
	roundFailed                    // the run failed (the error says why)
)

// endRound decides the round's restart from durable state and runs it (or
// clears what the runtime has outlived).
func (r *run) endRound(ctx workflow.Context) (roundEnd, error) {
	ws := r.ws
	var facts reconcile.RestartFacts
	// This round's deliveries (a plugin delivered again in a later round
	// counts in that round too).
	round := reconcile.RestartRound{Delivered: r.roundDelivered, Removed: r.roundRemoved, Present: r.count(ActionRecorded, ActionWouldRecord), DryRun: r.in.DryRun}
	r.roundDelivered, r.roundRemoved = 0, 0
	if err := r.route.exec(ctx, boxOptions("read restart state of "+ws.InstanceID, 45*time.Second), reconcile.ActivityReadRestartFacts, ws, &facts); err != nil {
		if round.Delivered+round.Removed > 0 || ctx.Err() != nil {
			return roundFailed, err
		}
		// Nothing delivered in this round and the box cannot be read
		// (stopped, unreachable): there is nothing this run can restart;
		// what an earlier run left owed stays owed.
		r.restart = RestartReport{Reason: "restart state not read (" + rootMessage(err) + "): nothing delivered; the next reconcile decides"}
		r.rounds = append(r.rounds, r.restart)
		return roundLast, nil
	}
	d := reconcile.DecideRestart(round, facts)
	r.restart = RestartReport{Needed: d.Restart(), Reason: d.Reason}
	workflow.GetLogger(ctx).Info("restart decision", "workspace", ws.ID, "restart", d.Restart(), "reason", d.Reason)
	workflow.SetCurrentDetails(ctx, r.details())
	if !r.in.DryRun {
		name := "box_restart_skipped_total"
		if d.Restart() {
			name = "box_restart_total"
		}
		workflow.GetMetricsHandler(ctx).WithTags(map[string]string{"reason": string(d.Code)}).Counter(name).Inc(1)
	}
	switch {
	case r.in.DryRun:
	case d.Restart():
		if err := r.restartBox(ctx, d); err != nil {
			if ctx.Err() != nil {
				return roundCancelled, nil
			}
			r.rounds = append(r.rounds, r.restart)
			return roundFailed, err
		}
	case d.Action == reconcile.ClearMarks:
		if err := r.clear(ctx, facts); err != nil {
			return roundFailed, err
		}
	}
	r.rounds = append(r.rounds, r.restart)
	workflow.SetCurrentDetails(ctx, r.details())
	return roundNext, nil
}

// restartBox runs the round's one restart, under a permit of the sweep
// that runs this reconcile, if any.
func (r *run) restartBox(ctx workflow.Context, d reconcile.RestartDecision) error {
	r.restarts++
	release := restartGate(r.in.RestartGate).acquire(ctx, r.restarts)
	defer release()
	var out reconcile.RestartOutcome
	opts := workflow.ActivityOptions{
		// One restart per round, under a deterministic ID; the activity
		// sees through the one restart the box owes.
		ActivityID:          fmt.Sprintf("restart-%d", r.restarts),
		StartToCloseTimeout: RestartAttemptTimeout,
		// The activity heartbeats every few seconds: a dead worker is
		// noticed in 20 s, and the ledger and the box's token make the
		// retry safe.
		HeartbeatTimeout:       20 * time.Second,
		ScheduleToCloseTimeout: 2 * time.Hour,
		RetryPolicy:            restartRetry,
		Summary:                fmt.Sprintf("restart %s: %s", r.ws.InstanceID, d.Reason),
	}
	if err := r.route.exec(ctx, opts, reconcile.ActivityRestartBox, reconcile.RestartInput{Workspace: r.ws, Reason: d.Reason}, &out); err != nil {
		return err
	}
	r.restart.Done, r.restart.Mode = out.Done(), out.Mode
	r.restart.IdentityBefore, r.restart.IdentityAfter = out.IdentityBefore, out.IdentityAfter
	r.restart.RestartIDs = out.RestartIDs
	if !r.restart.Done && out.Reason != "" {
		r.restart.Reason += "; at the restart: " + out.Reason
	}
	return nil
}

// clear clears the marks (and journal lines) the runtime has outlived.
func (r *run) clear(ctx workflow.Context, facts reconcile.RestartFacts) error {
	in := reconcile.ClearInput{WorkspaceID: r.ws.ID, UpTo: facts.LatestMark}
	if facts.JournalRead {
		in.UpTo = facts.ReadAt
		if len(facts.Journal) > 0 {
			ws := r.ws
			in.Workspace = &ws
		}
	}
	cctx := withActivity(ctx, "clear restart marks of "+r.ws.ID, 45*time.Second, storeRetry)
	return workflow.ExecuteActivity(cctx, reconcile.ActivityClearRestartPending, in).Get(ctx, nil)
}

// finish reports: the result, the outcome searchable, and a failure naming
// the plugins that failed. It waits on nothing, so no declaration can
// arrive unread between the last look (settle) and the run's end.
func (r *run) finish(ctx workflow.Context) (ReconcileResult, error) {
	res := r.result()
	workflow.GetLogger(ctx).Info("reconcile finished", "workspace", r.ws.ID, "summary", res.Summary)
	updates := []temporal.SearchAttributeUpdate{SearchOutcome.ValueSet(res.Outcome)}
	if r.declared {
		updates = append(updates, SearchDriftDetected.ValueSet(res.drift()))
	}
	if err := r.search(ctx, updates...); err != nil {
		return res, err
	}
	if len(res.Failed) > 0 {
		return res, temporal.NewNonRetryableApplicationError(
			fmt.Sprintf("%s: failed: %s", res.Summary, strings.Join(res.Failed, ", ")), ErrPluginsFailed, nil, res)
	}
	return res, nil
}

// RestartAttemptTimeout bounds one attempt of RestartBox: the longest a
// restart may take (a systemd restart's stop and start timeouts, a reboot
// and its grace). A worker drains for as long on SIGTERM.
const RestartAttemptTimeout = 10 * time.Minute

// searchValueBudget bounds the encoded size of one search attribute value
// the workflow sets: Temporal refuses (and terminates the run for) a value
// over 2 KiB by default.
const searchValueBudget = 1536

// indexedPluginNames is the declaration's plugin names for the parent's
// PluginNames, when they fit the budget. A declaration of up to MaxPlugins
// names does not fit one value; then the parent indexes none (a partial
// list would make a query silently miss), and each plugin's child, which
// indexes its own name, answers "which reconciles touched plugin X".
func indexedPluginNames(ps []Plugin) ([]string, bool) {
	names := pluginNames(ps)
	size := 2
	for _, n := range names {
		size += len(n) + 3
	}
	return names, size <= searchValueBudget
}

// search upserts search attributes; a namespace without them fails here,
// naming what to register.
func (r *run) search(ctx workflow.Context, updates ...temporal.SearchAttributeUpdate) error {
	if err := workflow.UpsertTypedSearchAttributes(ctx, updates...); err != nil {
		return fmt.Errorf("upsert search attributes (register them with workflows.EnsureSearchAttributes): %w", err)
	}
	return nil
}

// fail ends the run on an error of its own (not a plugin's), keeping the
// outcome searchable.
func (r *run) fail(ctx workflow.Context, err error) (ReconcileResult, error) {
	_ = r.search(ctx, r.ended(OutcomeFailed)...)
	return r.result(), err
}

// ended is the search attributes of a run that ended with an outcome it
// did not converge with.
func (r *run) ended(outcome string) []temporal.SearchAttributeUpdate {
	updates := []temporal.SearchAttributeUpdate{SearchOutcome.ValueSet(outcome)}
	if r.declared {
		updates = append(updates, SearchDriftDetected.ValueSet(true))
	}
	return updates
}

// cancelled ends a cancelled run: no new delivery was started after the
// cancel, what the children verified is recorded, and a restart owed by a
// delivery (even one cut in the middle) stays pending in the store for the
// next reconcile. The result, the cancellation's details, says whether one
// is owed, as read from the store and the box after the cancel.
func (r *run) cancelled(ctx workflow.Context) (ReconcileResult, error) {
	for name, res := range r.results {
		if res.Action == ActionPending {
			res.Action, res.Reason = ActionCancelled, "reconcile cancelled before this plugin finished"
			r.results[name] = res
		}
	}
	r.cancel = true
	dctx, _ := workflow.NewDisconnectedContext(ctx)
	var facts reconcile.RestartFacts
	fopts := workflow.ActivityOptions{StartToCloseTimeout: 30 * time.Second, Summary: "read restart state of " + r.ws.InstanceID + " after cancel",
		RetryPolicy: &temporal.RetryPolicy{MaximumAttempts: 3, NonRetryableErrorTypes: permanent}}
	err := r.route.exec(dctx, fopts, reconcile.ActivityReadRestartFacts, r.ws, &facts)
	switch d := reconcile.DecideRestart(reconcile.RestartRound{}, facts); {
	case err != nil:
		r.restart = RestartReport{Needed: true, Reason: "cancelled; could not read the restart state (" + rootMessage(err) + "): the next reconcile decides"}
	case d.Restart():
		r.restart = RestartReport{Needed: true, Reason: "cancelled: restart left pending for the next reconcile (" + d.Reason + ")"}
	case d.Action == reconcile.ClearMarks && facts.JournalRead && len(facts.Journal) == 0:
		// Marks without swaps: a delivery was cut, and its install may
		// still finish on the box.
		r.restart = RestartReport{Needed: true, Reason: "cancelled during a delivery: restart left pending for the next reconcile to decide"}
	default:
		r.restart = RestartReport{Reason: "cancelled: no restart owed"}
	}
	res := r.result()
	_ = r.search(dctx, r.ended(OutcomeCancelled)...)
	workflow.GetLogger(ctx).Info("reconcile cancelled", "summary", res.Summary)
	return res, temporal.NewCanceledError(res)
}

func pluginNames(ps []Plugin) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Name
	}
	return out
}

// run is a reconcile's state.
type run struct {
	in             ReconcileInput
	ws             reconcile.Box
	route          *boxRoute // where the box work goes (nil: the shared queue)
	order          []string
	results        map[string]PluginResult
	restart        RestartReport   // the current round's
	rounds         []RestartReport // every finished round's
	roundDelivered int             // deliveries (or, in a dry run, would-deliver) since the last decision
	roundRemoved   int             // removals that changed the box (or, in a dry run, would-remove) since then
	restarts       int             // restarts decided so far (they name the restart activities)
	declarations   workflow.ReceiveChannel
	cancel         bool

	// Since declarations are kept (declared): the stored declaration's
	// generation and observed generation, and each plugin as this run
	// reconciled it.
	declared bool
	// indexedAtStart: the run is of the version that may take its search
	// attributes from its start and reconciles DefaultMaxParallel plugins
	// at a time.
	indexedAtStart       bool
	generation, observed int64
	reconciled           map[string]Plugin
}

// reconcile runs one child per plugin to reconcile or remove, at most
// MaxParallel at a time.
func (r *run) reconcile(ctx workflow.Context, w work) {
	limit := r.in.MaxParallel
	if limit == 0 {
		limit = DefaultMaxParallel
		if !r.indexedAtStart {
			limit = legacyMaxParallel
		}
	}
	parentID := workflow.GetInfo(ctx).WorkflowExecution.ID
	children := make([]PluginInput, 0, len(w.plugins)+len(w.remove))
	for _, p := range w.plugins {
		children = append(children, PluginInput{Workspace: r.ws, Plugin: p, DryRun: r.in.DryRun, BoxQueue: r.route.taskQueue()})
	}
	for _, p := range w.remove {
		children = append(children, PluginInput{Workspace: r.ws, Plugin: p, DryRun: r.in.DryRun, Remove: true, BoxQueue: r.route.taskQueue()})
	}
	for _, c := range children {
		p := c.Plugin
		if _, seen := r.results[p.Name]; !seen {
			r.order = append(r.order, p.Name)
		}
		r.results[p.Name] = PluginResult{Name: p.Name, Version: p.Version, Action: ActionPending}
		if c.Remove {
			delete(r.reconciled, p.Name)
		} else {
			r.reconciled[p.Name] = p
		}
	}
	sel := workflow.NewSelector(ctx)
	next, running := 0, 0
	start := func(in PluginInput) {
		p := in.Plugin
		summary := fmt.Sprintf("%s on %s", p, r.ws.InstanceID)
		if in.Remove {
			summary = fmt.Sprintf("remove %s from %s", p.Name, r.ws.InstanceID)
		}
		cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
			WorkflowID: PluginWorkflowID(parentID, p.Name),
			// A child never outlives its parent: a cancelled or terminated
			// reconcile cancels its deliveries.
			ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
			WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
			WaitForCancellation:   true,
			StaticSummary:         summary,
			// Each child indexes its own plugin: within the limits of a
			// search attribute whatever the declaration's size.
			TypedSearchAttributes: temporal.NewSearchAttributes(
				SearchWorkspaceID.ValueSet(r.in.WorkspaceID), SearchPluginNames.ValueSet([]string{p.Name})),
		})
		f := workflow.ExecuteChildWorkflow(cctx, ReconcilePlugin, in)
		running++
		sel.AddFuture(f, func(f workflow.Future) {
			running--
			var res PluginResult
			if err := f.Get(ctx, &res); err != nil {
				res = PluginResult{Name: p.Name, Version: p.Version, Action: ActionFailed, Reason: "failed after retries", Error: rootMessage(err)}
				if in.Remove {
					res.Reason = "removal failed after retries"
				}
				if temporal.IsCanceledError(err) {
					res.Action, res.Reason, res.Error = ActionCancelled, "reconcile cancelled before this plugin finished", ""
				}
			}
			r.results[p.Name] = res
			switch {
			case res.Action == ActionDelivered || res.Action == ActionWouldDeliver:
				r.roundDelivered++
			case res.Action == ActionRemoved, res.Action == ActionWouldRemove:
				// Counted whether or not this attempt found the plugin there:
				// an earlier attempt may have renamed it and died; the box's
				// journal decides whether a restart is owed.
				r.roundRemoved++
			}
			workflow.SetCurrentDetails(ctx, r.details())
		})
	}
	for running > 0 || next < len(children) {
		// Once cancelled, no new plugin is started; the running ones are
		// cancelled with the context and reported as they end.
		for running < limit && next < len(children) && ctx.Err() == nil {
			start(children[next])
			next++
		}
		if running == 0 {
			break
		}
		sel.Select(ctx)
	}
}

// drain takes every waiting declaration and returns what is left to do
// (see drainOnce), until a look finds none waiting or work to do.
func (r *run) drain(ctx workflow.Context) (work, error) {
	for {
		w, recorded, err := r.drainOnce(ctx)
		if err != nil || !w.empty() || !recorded {
			return w, err
		}
	}
}

// drainOnce takes every waiting declaration and returns what is left to
// do: since declarations are kept, what the recorded declaration asks
// (see record), and whether there was one to record (a declaration that
// changes nothing is recorded too, and others may have arrived meanwhile);
// before, the plugins not yet reconciled at their declared version (a
// failed one is tried again).
func (r *run) drainOnce(ctx workflow.Context) (work, bool, error) {
	if r.declared {
		d, ok := r.waiting()
		if !ok {
			return work{}, false, nil
		}
		w, err := r.record(ctx, reconcile.DeclareInput{WorkspaceID: r.in.WorkspaceID, Plugins: d.Plugins, Prune: d.Prune, Converge: d.Converge, DryRun: r.in.DryRun})
		return w, true, err
	}
	ch := r.declarations
	var out []Plugin
	idx := map[string]int{}
	for {
		var d Declaration
		if !ch.ReceiveAsync(&d) {
			return work{plugins: out}, false, nil
		}
		if validatePlugins(d.Plugins) != nil {
			continue // a trigger validated its input; a bad signal is dropped
		}
		for _, p := range d.Plugins {
			if res, ok := r.results[p.Name]; ok && res.Version == p.Version && res.Action != ActionFailed {
				continue
			}
			if i, ok := idx[p.Name]; ok {
				out[i] = p
				continue
			}
			idx[p.Name] = len(out)
			out = append(out, p)
		}
	}
}

// waiting folds every waiting declaration into one (Declaration.Then), and
// reports whether there was any. A bad one is dropped: a trigger validated
// its input.
func (r *run) waiting() (Declaration, bool) {
	var folded Declaration
	got := false
	for {
		var d Declaration
		if !r.declarations.ReceiveAsync(&d) {
			return folded, got
		}
		if d.Validate() != nil {
			continue
		}
		if got {
			d = folded.Then(d)
		}
		folded, got = d, true
	}
}

// record records a declaration (RecordDeclaration, which also loads the
// box) and returns what the stored declaration asks of this run: the
// declared plugins it has not reconciled as declared (or that failed), and
// the tracked plugins no longer declared that it has not removed.
func (r *run) record(ctx workflow.Context, in reconcile.DeclareInput) (work, error) {
	var d reconcile.Declared
	summary := fmt.Sprintf("record the declaration of %s (%d plugins)", in.WorkspaceID, len(in.Plugins))
	switch {
	case in.Converge:
		summary = "load the declaration of " + in.WorkspaceID
	case in.Prune:
		summary += ", pruning the rest"
	}
	dctx := withActivity(ctx, summary, 30*time.Second, storeRetry)
	if err := workflow.ExecuteActivity(dctx, reconcile.ActivityRecordDeclaration, in).Get(ctx, &d); err != nil {
		return work{}, err
	}
	r.ws, r.generation, r.observed = d.Workspace, d.Generation, d.Observed
	var w work
	for _, p := range d.Plugins {
		if done, ok := r.reconciled[p.Name]; ok && done == p && r.results[p.Name].Action.Converged() {
			continue
		}
		w.plugins = append(w.plugins, p)
	}
	for _, p := range d.Undeclared {
		if a := r.results[p.Name].Action; a == ActionRemoved || a == ActionWouldRemove {
			continue
		}
		w.remove = append(w.remove, p)
	}
	return w, nil
}

func (r *run) count(actions ...Action) int {
	n := 0
	for _, res := range r.results {
		for _, a := range actions {
			if res.Action == a {
				n++
			}
		}
	}
	return n
}

func (r *run) ordered() []PluginResult {
	out := make([]PluginResult, 0, len(r.order))
	for _, name := range r.order {
		out = append(out, r.results[name])
	}
	return out
}

func (r *run) status() Status {
	phase := "reconciling"
	if r.restart.Reason != "" {
		phase = "restart decided"
	}
	return Status{Phase: phase, Plugins: r.ordered(), Restart: r.restart}
}

func (r *run) result() ReconcileResult {
	res := ReconcileResult{WorkspaceID: r.in.WorkspaceID, InstanceID: r.ws.InstanceID, DryRun: r.in.DryRun, Plugins: r.ordered(), Restart: r.restart}
	if len(r.rounds) > 1 {
		res.Restarts = r.rounds
	}
	for _, p := range res.Plugins {
		if p.Action == ActionFailed {
			res.Failed = append(res.Failed, p.Name)
		}
	}
	sort.Strings(res.Failed)
	switch {
	case r.cancel:
		res.Outcome = OutcomeCancelled
	case r.in.DryRun:
		res.Outcome = OutcomeDryRun
	case len(res.Failed) > 0:
		res.Outcome = OutcomeFailed
	case res.restarted() > 0:
		res.Outcome = OutcomeRestarted
	case res.Count(ActionDelivered) > 0:
		res.Outcome = OutcomeDelivered
	default:
		res.Outcome = OutcomeRecordedOnly
	}
	if r.cancel {
		owed := "no restart owed"
		if r.restart.Needed {
			owed = "restart left pending for the next reconcile"
		}
		res.Summary = fmt.Sprintf("cancelled: %d recorded, %d delivered, %d not finished; %s",
			res.Count(ActionRecorded), res.Count(ActionDelivered), res.Count(ActionCancelled), owed)
		return res
	}
	if r.in.DryRun {
		remove := ""
		if n := res.Count(ActionWouldRemove); n > 0 {
			remove = fmt.Sprintf(", %d to remove", n)
		}
		res.Summary = fmt.Sprintf("plan: %d to record, %d to deliver%s, restart %s (%s)",
			res.Count(ActionWouldRecord), res.Count(ActionWouldDeliver), remove, yesNo(r.restart.Needed), r.restart.Reason)
		return res
	}
	restart := "not restarted"
	switch n := res.restarted(); {
	case n == 1:
		restart = "restarted"
	case n > 1:
		restart = fmt.Sprintf("restarted %d times, once per round", n)
	}
	removed := ""
	if n := res.Count(ActionRemoved); n > 0 {
		removed = fmt.Sprintf(", %d removed", n)
	}
	res.Summary = fmt.Sprintf("%d recorded, %d delivered%s, %d failed; box %s: %s",
		res.Count(ActionRecorded), res.Count(ActionDelivered), removed, len(res.Failed), restart, r.restart.Reason)
	if r.declared && !r.in.DryRun {
		res.Generation, res.ObservedGeneration = r.generation, r.observed
	}
	return res
}

// details renders the live per-plugin table shown in the Web UI.
func (r *run) details() string {
	var b strings.Builder
	b.WriteString("| plugin | version | action | reason |\n|---|---|---|---|\n")
	for _, p := range r.ordered() {
		reason := p.Reason
		if p.Error != "" {
			reason = p.Error
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", p.Name, p.Version, p.Action, reason)
	}
	if r.restart.Reason != "" {
		fmt.Fprintf(&b, "\n**restart:** %s — %s\n", yesNo(r.restart.Needed), r.restart.Reason)
	}
	return b.String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// rootMessage is the innermost failure's message: what an operator acts on.
func rootMessage(err error) string {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err.Error()
		}
		err = next
	}
}
