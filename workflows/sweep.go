package workflows

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	Restarts   int      // boxes restarted (or, in a dry run, to restart)
	Failures   int      // reconciles that failed
	Failed     []string `json:",omitempty"` // "workspace: reason"
	Skipped    int      // workspaces whose reconcile was already running
	Runs       int      // workflow runs (continue-as-new)
	Stopped    bool     `json:",omitempty"`
	StopReason string   `json:",omitempty"`
}

// SweepFleet reconciles every active workspace, re-declaring its tracked
// plugins: a sliding window of at most MaxConcurrency reconciles, at most
// MaxRestartsInFlight restarts at once, an error budget that stops starting
// new reconciles, and continue-as-new before the history grows large.
func SweepFleet(ctx workflow.Context, in SweepInput) (SweepReport, error) {
	in.setDefaults()
	logger := workflow.GetLogger(ctx)
	rep := in.Totals
	rep.Runs++
	self := workflow.GetInfo(ctx).WorkflowExecution.ID

	inFlight := 0
	pool := newPermitPool(in.MaxRestartsInFlight)
	// Permits follow their holders' lives: a reconcile that ends (or is
	// terminated, or reset) without giving its permit back frees it.
	leases := workflow.GetVersion(ctx, "sweep-permit-leases", workflow.DefaultVersion, 1) == 1
	sel := workflow.NewSelector(ctx)
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPermitRequest), func(c workflow.ReceiveChannel, _ bool) {
		var r PermitRequest
		c.Receive(ctx, &r)
		pool.request(r, leases)
	})
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPermitRelease), func(c workflow.ReceiveChannel, _ bool) {
		var r PermitRequest
		c.Receive(ctx, &r)
		pool.release(r)
	})
	// step waits for one event (a reconcile ending, a permit asked for or
	// given back) and hands out the permits it can.
	step := func() {
		sel.Select(ctx)
		for {
			g, ok := pool.next()
			if !ok {
				break
			}
			var payload any
			if leases {
				payload = g
			}
			f := workflow.SignalExternalWorkflow(ctx, g.WorkflowID, "", SignalPermit, payload)
			sel.AddFuture(f, func(f workflow.Future) {
				// A reconcile that is gone cannot take its permit or give
				// it back, so a failed signal returns it.
				if f.Get(ctx, nil) != nil {
					pool.release(g)
				}
			})
		}
	}
	start := func(t reconcile.SweepTarget) {
		plugins := make([]Plugin, len(t.Plugins))
		for i, p := range t.Plugins {
			plugins[i] = Plugin{Name: p.Name, Version: p.Version}
		}
		// A plan runs under the plan's workflow ID: a real trigger for the
		// workspace meanwhile starts (or joins) the real reconcile, and is
		// never folded into a plan.
		id := ReconcileWorkflowID(t.WorkspaceID)
		if in.DryRun && workflow.GetVersion(ctx, "sweep-plan-ids", workflow.DefaultVersion, 1) == 1 {
			id = PlanWorkflowID(t.WorkspaceID)
		}
		cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
			WorkflowID:            id,
			ParentClosePolicy:     enumspb.PARENT_CLOSE_POLICY_REQUEST_CANCEL,
			WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_ALLOW_DUPLICATE,
			StaticSummary:         fmt.Sprintf("sweep: reconcile %s (%d plugins)", t.WorkspaceID, len(plugins)),
		})
		f := workflow.ExecuteChildWorkflow(cctx, ReconcileWorkspace, ReconcileInput{
			WorkspaceID: t.WorkspaceID, Plugins: plugins, DryRun: in.DryRun, RestartGate: self,
		})
		inFlight++
		sel.AddFuture(f, func(f workflow.Future) {
			inFlight--
			if leases {
				pool.holderGone(id)
			}
			var res ReconcileResult
			err := f.Get(ctx, &res)
			var app *temporal.ApplicationError
			switch {
			case err == nil:
			case errors.As(err, &app) && app.Type() == ErrPluginsFailed:
				_ = app.Details(&res)
			case temporal.IsWorkflowExecutionAlreadyStartedError(err):
				rep.Skipped++
				return
			default:
				rep.Failures++
				rep.Failed = append(rep.Failed, t.WorkspaceID+": "+rootMessage(err))
				return
			}
			rep.tally(t.WorkspaceID, res)
		})
	}

	startedThisRun := 0
	for !rep.Stopped {
		var page []reconcile.SweepTarget
		pctx := withActivity(ctx, "list workspaces after "+quoteOrStart(in.After), time.Minute, storeRetry)
		if err := workflow.ExecuteActivity(pctx, reconcile.ActivityListWorkspaces, reconcile.PageInput{After: in.After, Limit: in.PageSize}).Get(ctx, &page); err != nil {
			return rep, err
		}
		if len(page) == 0 {
			break
		}
		for _, t := range page {
			for inFlight >= in.MaxConcurrency {
				step()
			}
			if rep.Failures > in.MaxErrors {
				rep.Stopped = true
				rep.StopReason = fmt.Sprintf("%d reconciles failed, more than the budget of %d: no new reconcile started", rep.Failures, in.MaxErrors)
				break
			}
			start(t)
			in.After = t.WorkspaceID
			startedThisRun++
		}
		if !rep.Stopped && (startedThisRun >= in.MaxPerRun || workflow.GetInfo(ctx).GetContinueAsNewSuggested()) {
			// Drain this run's reconciles (and their permits) so that the
			// next run starts with nothing in flight.
			for inFlight > 0 || !pool.idle() {
				step()
			}
			next := in
			next.Totals = rep
			logger.Info("sweep continues as new", "after", in.After, "checked", rep.Checked)
			return rep, workflow.NewContinueAsNewError(ctx, SweepFleet, next)
		}
	}
	for inFlight > 0 {
		step()
	}
	logger.Info("sweep finished", "checked", rep.Checked, "delivered", rep.Delivered, "restarts", rep.Restarts, "failures", rep.Failures)
	return rep, nil
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
		if p.Action == ActionDelivered || p.Action == ActionWouldDeliver {
			r.Delivered++
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

// permitPool is the sweep's restart permits: at most size restarts at
// once among the reconciles it runs. A permit is held by a workflow ID for
// one of its rounds; it comes back when the holder gives it back, when the
// holder asks again for a later round (the earlier release was lost), or
// when the holder's workflow ends (terminated, failed, reset away) without
// giving it back. A request repeated for the round it already holds (a
// reset run asking again) is granted again without taking a second permit.
type permitPool struct {
	size    int
	free    int
	waiting []PermitRequest
	granted map[string]PermitRequest
	resend  []PermitRequest
}

func newPermitPool(size int) *permitPool {
	return &permitPool{size: size, free: size, granted: map[string]PermitRequest{}}
}

// request queues r (or, for the round its requester holds, grants it
// again).
func (p *permitPool) request(r PermitRequest, rounds bool) {
	if g, ok := p.granted[r.WorkflowID]; ok && rounds {
		if g.Seq == r.Seq {
			p.resend = append(p.resend, r)
			return
		}
		p.holderGone(r.WorkflowID)
	}
	p.waiting = slices.DeleteFunc(p.waiting, func(w PermitRequest) bool { return w.WorkflowID == r.WorkflowID })
	p.waiting = append(p.waiting, r)
}

// release frees r's permit, or drops r's request if it was not granted.
func (p *permitPool) release(r PermitRequest) {
	if g, ok := p.granted[r.WorkflowID]; ok && g.Seq == r.Seq {
		delete(p.granted, r.WorkflowID)
		p.free++
		return
	}
	p.waiting = slices.DeleteFunc(p.waiting, func(w PermitRequest) bool { return w == r })
}

// holderGone frees whatever id holds or waits for: its workflow has ended.
func (p *permitPool) holderGone(id string) {
	if _, ok := p.granted[id]; ok {
		delete(p.granted, id)
		p.free++
	}
	p.waiting = slices.DeleteFunc(p.waiting, func(w PermitRequest) bool { return w.WorkflowID == id })
}

// next is the next grant to send, if any.
func (p *permitPool) next() (PermitRequest, bool) {
	if len(p.resend) > 0 {
		r := p.resend[0]
		p.resend = p.resend[1:]
		return r, true
	}
	if p.free == 0 || len(p.waiting) == 0 {
		return PermitRequest{}, false
	}
	r := p.waiting[0]
	p.waiting = p.waiting[1:]
	p.free--
	p.granted[r.WorkflowID] = r
	return r, true
}

// idle: every permit is back and nobody waits.
func (p *permitPool) idle() bool { return p.free == p.size && len(p.waiting) == 0 }
