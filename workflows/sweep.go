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

	"github.com/plugin-reconciler/plugin-reconciler/activities"
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

// PermitRequest is the payload of SignalPermitRequest and SignalPermitRelease.
type PermitRequest struct {
	WorkflowID string
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

	inFlight, permits := 0, in.MaxRestartsInFlight
	var waiting []string
	granted := map[string]bool{}
	sel := workflow.NewSelector(ctx)
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPermitRequest), func(c workflow.ReceiveChannel, _ bool) {
		var r PermitRequest
		c.Receive(ctx, &r)
		waiting = append(waiting, r.WorkflowID)
	})
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPermitRelease), func(c workflow.ReceiveChannel, _ bool) {
		var r PermitRequest
		c.Receive(ctx, &r)
		if granted[r.WorkflowID] {
			delete(granted, r.WorkflowID)
			permits++
			return
		}
		waiting = slices.DeleteFunc(waiting, func(id string) bool { return id == r.WorkflowID })
	})
	// step waits for one event (a reconcile ending, a permit asked for or
	// given back) and hands out the permits it can.
	step := func() {
		sel.Select(ctx)
		for permits > 0 && len(waiting) > 0 {
			permits--
			// A reconcile that is gone cannot take its permit or give
			// it back, so a failed signal returns it.
			id := waiting[0]
			waiting = waiting[1:]
			granted[id] = true
			f := workflow.SignalExternalWorkflow(ctx, id, "", SignalPermit, nil)
			sel.AddFuture(f, func(f workflow.Future) {
				if f.Get(ctx, nil) != nil && granted[id] {
					delete(granted, id)
					permits++
				}
			})
		}
	}
	start := func(t activities.SweepTarget) {
		plugins := make([]Plugin, len(t.Plugins))
		for i, p := range t.Plugins {
			plugins[i] = Plugin{Name: p.Name, Version: p.Version}
		}
		cctx := workflow.WithChildOptions(ctx, workflow.ChildWorkflowOptions{
			WorkflowID:            ReconcileWorkflowID(t.WorkspaceID),
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
		var page []activities.SweepTarget
		pctx := withActivity(ctx, "list workspaces after "+quoteOrStart(in.After), time.Minute, storeRetry)
		if err := workflow.ExecuteActivity(pctx, a.ListWorkspaces, activities.PageInput{After: in.After, Limit: in.PageSize}).Get(ctx, &page); err != nil {
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
			for inFlight > 0 || permits < in.MaxRestartsInFlight {
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
		case strings.HasPrefix(p.Reason, "absent"):
			r.Missing++
		case strings.HasPrefix(p.Reason, "stale"), strings.HasPrefix(p.Reason, "digest differs"):
			r.Stale++
		}
		if p.Action == ActionDelivered || p.Action == ActionWouldDeliver {
			r.Delivered++
		}
	}
	if res.Restart.Done || (res.DryRun && res.Restart.Needed) {
		r.Restarts++
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
