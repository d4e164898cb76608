package workflows

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// SweepWorkflowID is the fleet sweep's workflow ID: one sweep at a time.
const SweepWorkflowID = "sweep-fleet"

// SweepScheduleID is the Temporal Schedule that starts sweeps.
const SweepScheduleID = "sweep-fleet-schedule"

// Signals between a sweep and the reconciles it runs: a reconcile that has
// decided to restart its box asks the sweep for a permit and waits for it,
// and gives it back when its restart is done, so that at most
// MaxRestartsInFlight boxes restart at once fleet-wide.
const (
	SignalPermitRequest = "restart-permit-request"
	SignalPermit        = "restart-permit"
	SignalPermitRelease = "restart-permit-release"
)

// PermitRequest is the payload of SignalPermitRequest, SignalPermit and
// SignalPermitRelease: who asks, and for which of its rounds (a reconcile
// restarts at most once per round).
type PermitRequest struct {
	WorkflowID string
	Seq        int `json:",omitempty"`
}

// SweepInput configures a fleet sweep.
type SweepInput struct {
	MaxConcurrency      int  // reconciles in flight at once (default 20)
	MaxErrors           int  // stop starting reconciles when more have failed (default 5)
	MaxRestartsInFlight int  // box restarts at once, fleet-wide (default 5)
	PageSize            int  // workspaces per page (default 100)
	MaxPerRun           int  // workspaces per run before continue-as-new (default 500)
	DryRun              bool `json:",omitempty"`

	// Carried across continue-as-new.
	After  string      `json:",omitempty"`
	Totals SweepReport `json:",omitempty"`
}

func (in *SweepInput) setDefaults() {
	for _, f := range []struct {
		v   *int
		def int
	}{{&in.MaxConcurrency, 20}, {&in.MaxErrors, 5}, {&in.MaxRestartsInFlight, 5}, {&in.PageSize, 100}, {&in.MaxPerRun, 500}} {
		if *f.v <= 0 {
			*f.v = f.def
		}
	}
}

// SweepReport sums up a sweep.
type SweepReport struct {
	Checked    int      // reconciles that ran to an end
	Missing    int      // plugins found absent
	Stale      int      // plugins found at another version or digest
	Delivered  int      // plugins delivered (or, in a dry run, to deliver)
	Removed    int      `json:",omitempty"` // plugins no longer declared removed (or, in a dry run, to remove)
	Restarts   int      // boxes restarted (or, in a dry run, to restart)
	Failures   int      // reconciles that failed
	Failed     []string `json:",omitempty"` // "workspace: reason"
	Skipped    int      // workspaces whose reconcile was already running
	Runs       int      // workflow runs (continue-as-new)
	Stopped    bool     `json:",omitempty"`
	StopReason string   `json:",omitempty"`
}

// String is the report as an operator reads it: one line of counts, then a
// line per failure and the reason the sweep stopped, if it did.
func (r SweepReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d workspaces checked, %d plugins missing, %d stale, %d delivered, %d removed, %d restarts, %d failed, %d skipped (already reconciling)",
		r.Checked, r.Missing, r.Stale, r.Delivered, r.Removed, r.Restarts, r.Failures, r.Skipped)
	for _, f := range r.Failed {
		b.WriteString("\n  failed: " + f)
	}
	if r.Stopped {
		b.WriteString("\n  stopped: " + r.StopReason)
	}
	return b.String()
}

// SweepFleet reconciles every active workspace to its stored declaration
// (a workspace tracked before declarations were kept: to its tracking
// rows): a sliding window of at most MaxConcurrency reconciles, at most
// MaxRestartsInFlight restarts at once, an error budget that stops starting
// new reconciles, and continue-as-new before the history grows large.
func SweepFleet(ctx workflow.Context, in SweepInput) (SweepReport, error) {
	in.setDefaults()
	s := newSweep(ctx, in)
	for !s.rep.Stopped {
		page, err := s.nextPage(ctx)
		if err != nil || len(page) == 0 {
			if err != nil {
				return s.rep, err
			}
			break
		}
		s.startAll(ctx, page)
		if !s.rep.Stopped && (s.startedThisRun >= in.MaxPerRun || workflow.GetInfo(ctx).GetContinueAsNewSuggested()) {
			return s.continueAsNew(ctx)
		}
	}
	for s.inFlight > 0 {
		s.step(ctx)
	}
	workflow.GetLogger(ctx).Info("sweep finished", "checked", s.rep.Checked, "delivered", s.rep.Delivered, "restarts", s.rep.Restarts, "failures", s.rep.Failures)
	return s.rep, nil
}

// sweep is a fleet sweep's state: its report, the reconciles in flight, the
// restart permits and the selector that waits for all of them.
type sweep struct {
	in             SweepInput
	rep            SweepReport
	self           string
	pool           *permitPool
	leases         bool // permits are freed when their holder ends
	converge       bool // reconciles converge to the stored declaration
	sel            workflow.Selector
	inFlight       int
	startedThisRun int
}

func newSweep(ctx workflow.Context, in SweepInput) *sweep {
	s := &sweep{in: in, rep: in.Totals, self: workflow.GetInfo(ctx).WorkflowExecution.ID, pool: newPermitPool(in.MaxRestartsInFlight)}
	s.rep.Runs++
	// Permits follow their holders' lives: a reconcile that ends (or is
	// terminated, or reset) without giving its permit back frees it.
	s.leases = workflow.GetVersion(ctx, "sweep-permit-leases", workflow.DefaultVersion, 1) == 1
	// A reconcile converges to the declaration as stored when it starts, not
	// as this sweep listed it: a trigger with Prune meanwhile is not undone.
	s.converge = workflow.GetVersion(ctx, "sweep-converge", workflow.DefaultVersion, 1) == 1
	s.sel = workflow.NewSelector(ctx)
	s.sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPermitRequest), func(c workflow.ReceiveChannel, _ bool) {
		var r PermitRequest
		c.Receive(ctx, &r)
		s.pool.request(r, s.leases)
	})
	s.sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPermitRelease), func(c workflow.ReceiveChannel, _ bool) {
		var r PermitRequest
		c.Receive(ctx, &r)
		s.pool.release(r)
	})
	return s
}

// nextPage lists the next page of workspaces to sweep.
func (s *sweep) nextPage(ctx workflow.Context) ([]reconcile.SweepTarget, error) {
	var page []reconcile.SweepTarget
	pctx := withActivity(ctx, "list workspaces after "+quoteOrStart(s.in.After), time.Minute, storeRetry)
	err := workflow.ExecuteActivity(pctx, reconcile.ActivityListWorkspaces, reconcile.PageInput{After: s.in.After, Limit: s.in.PageSize}).Get(ctx, &page)
	return page, err
}

// startAll starts a page's reconciles, keeping at most MaxConcurrency in
// flight, until the error budget is spent.
func (s *sweep) startAll(ctx workflow.Context, page []reconcile.SweepTarget) {
	for _, t := range page {
		for s.inFlight >= s.in.MaxConcurrency {
			s.step(ctx)
		}
		if s.rep.Failures > s.in.MaxErrors {
			s.rep.Stopped = true
			s.rep.StopReason = fmt.Sprintf("%d reconciles failed, more than the budget of %d: no new reconcile started", s.rep.Failures, s.in.MaxErrors)
			return
		}
		s.start(ctx, t)
		s.in.After = t.WorkspaceID
		s.startedThisRun++
	}
}

// continueAsNew drains this run's reconciles (and their permits), so that
// the next run starts with nothing in flight, and continues as new.
func (s *sweep) continueAsNew(ctx workflow.Context) (SweepReport, error) {
	for s.inFlight > 0 || !s.pool.idle() {
		s.step(ctx)
	}
	next := s.in
	next.Totals = s.rep
	workflow.GetLogger(ctx).Info("sweep continues as new", "after", s.in.After, "checked", s.rep.Checked)
	return s.rep, workflow.NewContinueAsNewError(ctx, SweepFleet, next)
}

// step waits for one event (a reconcile ending, a permit asked for or
// given back) and hands out the permits it can.
func (s *sweep) step(ctx workflow.Context) {
	s.sel.Select(ctx)
	for {
		g, ok := s.pool.next()
		if !ok {
			return
		}
		var payload any
		if s.leases {
			payload = g
		}
		f := workflow.SignalExternalWorkflow(ctx, g.WorkflowID, "", SignalPermit, payload)
		s.sel.AddFuture(f, func(f workflow.Future) {
			// A reconcile that is gone cannot take its permit or give it
			// back, so a failed signal returns it.
			if f.Get(ctx, nil) != nil {
				s.pool.release(g)
			}
		})
	}
}

// start starts one workspace's reconcile as a child, and tallies it when
// it ends.
func (s *sweep) start(ctx workflow.Context, t reconcile.SweepTarget) {
	plugins := make([]Plugin, len(t.Plugins))
	for i, p := range t.Plugins {
		plugins[i] = Plugin{Name: p.Name, Version: p.Version}
	}
	// A plan runs under the plan's workflow ID: a real trigger for the
	// workspace meanwhile starts (or joins) the real reconcile, and is never
	// folded into a plan.
	id := ReconcileWorkflowID(t.WorkspaceID)
	if s.in.DryRun && workflow.GetVersion(ctx, "sweep-plan-ids", workflow.DefaultVersion, 1) == 1 {
		id = PlanWorkflowID(t.WorkspaceID)
	}
	cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
		WorkflowID:            id,
		ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
		WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		StaticSummary:         fmt.Sprintf("sweep: reconcile %s (%d plugins)", t.WorkspaceID, len(plugins)),
	})
	f := workflow.ExecuteChildWorkflow(cctx, ReconcileWorkspace, ReconcileInput{
		WorkspaceID: t.WorkspaceID, Plugins: plugins, Converge: s.converge, DryRun: s.in.DryRun, RestartGate: s.self,
	})
	s.inFlight++
	s.sel.AddFuture(f, func(f workflow.Future) {
		s.inFlight--
		if s.leases {
			s.pool.holderGone(id)
		}
		var res ReconcileResult
		err := f.Get(ctx, &res)
		var app *temporal.ApplicationError
		switch {
		case err == nil:
		case errors.As(err, &app) && app.Type() == ErrPluginsFailed:
			_ = app.Details(&res)
		case temporal.IsWorkflowExecutionAlreadyStartedError(err):
			s.rep.Skipped++
			return
		default:
			s.rep.Failures++
			s.rep.Failed = append(s.rep.Failed, t.WorkspaceID+": "+rootMessage(err))
			return
		}
		s.rep.tally(t.WorkspaceID, res)
	})
}

func (r *SweepReport) tally(workspace string, res ReconcileResult) {
	r.Checked++
	for _, p := range res.Plugins {
		switch {
		case p.Verdict.Missing():
			r.Missing++
		case p.Verdict == reconcile.VerdictStale, p.Verdict == reconcile.VerdictDigestDiffers:
			r.Stale++
		}
		switch p.Action {
		case ActionDelivered, ActionWouldDeliver:
			r.Delivered++
		case ActionRemoved, ActionWouldRemove:
			r.Removed++
		}
	}
	switch {
	case res.DryRun && res.Restart.Needed:
		r.Restarts++
	default:
		r.Restarts += res.RestartsDone()
	}
	if len(res.Failed) > 0 {
		r.Failures++
		r.Failed = append(r.Failed, fmt.Sprintf("%s: plugins failed: %s", workspace, strings.Join(res.Failed, ", ")))
	}
}

func quoteOrStart(after string) string {
	if after == "" {
		return "the start"
	}
	return after
}

// StartSweep starts a fleet sweep, or joins the one that is running: two
// sweeps never run in parallel.
func StartSweep(ctx context.Context, c client.Client, in SweepInput) (client.WorkflowRun, error) {
	return c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID:                       SweepWorkflowID,
		TaskQueue:                TaskQueue,
		WorkflowIDReusePolicy:    enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
		WorkflowIDConflictPolicy: enumspb.WORKFLOW_ID_CONFLICT_POLICY_USE_EXISTING,
		StaticSummary:            fmt.Sprintf("fleet sweep: window %d, error budget %d, %d restarts at once", in.MaxConcurrency, in.MaxErrors, in.MaxRestartsInFlight),
	}, SweepFleet, in)
}

// EnsureSchedule creates the sweep's Temporal Schedule, or updates its
// interval and input if it exists: running it twice leaves one schedule.
// Overlapping sweeps are skipped. It reports whether it created one.
func EnsureSchedule(ctx context.Context, c client.Client, every time.Duration, in SweepInput) (created bool, err error) {
	if every < time.Minute {
		return false, fmt.Errorf("schedule interval %s is shorter than a minute", every)
	}
	action := &client.ScheduleWorkflowAction{
		ID:        SweepWorkflowID,
		Workflow:  SweepFleet,
		Args:      []any{in},
		TaskQueue: TaskQueue,
	}
	spec := client.ScheduleSpec{Intervals: []client.ScheduleIntervalSpec{{Every: every}}}
	_, err = c.ScheduleClient().Create(ctx, client.ScheduleOptions{
		ID: SweepScheduleID, Spec: spec, Action: action,
		Overlap: enumspb.SCHEDULE_OVERLAP_POLICY_SKIP,
		Note:    "fleet drift sweep (starter schedule)",
	})
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, temporal.ErrScheduleAlreadyRunning) {
		return false, fmt.Errorf("create schedule %s: %w", SweepScheduleID, err)
	}
	h := c.ScheduleClient().GetHandle(ctx, SweepScheduleID)
	err = h.Update(ctx, client.ScheduleUpdateOptions{DoUpdate: func(u client.ScheduleUpdateInput) (*client.ScheduleUpdate, error) {
		s := u.Description.Schedule
		s.Spec = &spec
		s.Action = action
		return &client.ScheduleUpdate{Schedule: &s}, nil
	}})
	if err != nil {
		return false, fmt.Errorf("update schedule %s: %w", SweepScheduleID, err)
	}
	return false, nil
}
