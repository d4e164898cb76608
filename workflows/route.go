package workflows

import (
	"errors"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Box affinity across a worker pool. Every worker polls the shared task
// queue and one of its own (reconcile.BoxQueue); a reconcile picks one
// worker for its box (ClaimBoxQueue) and sends all its box work there —
// probes, deliveries, removals, the restart state and the restart — so
// the box sees one key push and one SSH handshake however many workers
// there are: the one connection that worker keeps to it. Store work runs
// on the shared queue, anywhere.
//
// A worker that dies is noticed by Temporal: a box activity waits on its
// queue for boxScheduleToStart and then fails with a schedule-to-start
// timeout, which Temporal does not retry. The route then avoids that
// queue and picks again; every caller that saw the same dead queue picks
// the same next worker (rendezvous hashing), so a workspace re-dials at
// most once per dead worker. Routing saves dials and must never stop a
// reconcile: when no worker can be picked, the pick fails, or one
// activity has moved maxRepicks times (a worker so busy that its tasks
// wait past the timeout looks dead too), the activity runs on the shared
// queue, which every worker polls.

// boxScheduleToStart is how long a box activity may wait on a worker's own
// queue before that worker counts as gone. A busy worker starts a task in
// well under this; a deploy's drain stops polling at once, so the tasks
// sent to a draining worker move on after it.
const boxScheduleToStart = 20 * time.Second

// maxRepicks bounds how often one activity moves to another worker before
// it goes to the shared queue.
const maxRepicks = 3

// boxRoute is where a workspace's box activities go; nil (or an empty
// queue) is the shared task queue, as for runs started before routes.
type boxRoute struct {
	workspaceID string
	queue       string
	avoid       []string
	moves       int // how many times an activity moved, for unique activity IDs
}

// claimBoxQueue picks the worker for a workspace's box work ("" when there
// is none to pick: the shared queue).
func claimBoxQueue(ctx workflow.Context, workspaceID string, avoid []string) (string, error) {
	cctx := withActivity(ctx, "pick the worker for the box of "+workspaceID, 30*time.Second, storeRetry)
	var r reconcile.BoxRoute
	err := workflow.ExecuteActivity(cctx, reconcile.ActivityClaimBoxQueue, reconcile.ClaimInput{WorkspaceID: workspaceID, Avoid: avoid}).Get(ctx, &r)
	return r.TaskQueue, err
}

// routeFor is the route a child was given.
func routeFor(workspaceID, queue string) *boxRoute {
	if queue == "" {
		return nil
	}
	return &boxRoute{workspaceID: workspaceID, queue: queue}
}

// taskQueue is the route's queue, for a child's input.
func (b *boxRoute) taskQueue() string {
	if b == nil {
		return ""
	}
	return b.queue
}

// boxOptions are a box activity's options: a short activity that
// heartbeats (a dead worker is noticed in 20 s) and is retried by
// boxRetry.
func boxOptions(summary string, startToClose time.Duration) workflow.ActivityOptions {
	return workflow.ActivityOptions{
		StartToCloseTimeout: startToClose,
		HeartbeatTimeout:    20 * time.Second,
		RetryPolicy:         boxRetry,
		Summary:             summary,
	}
}

// exec runs a box activity on the route and waits for it. When the route
// has a queue, the activity runs there with a schedule-to-start timeout;
// if it sat there past it (the worker is gone, or swamped), the queue is
// avoided from then on, another worker is picked, and the activity is
// sent again (with its own activity ID, if it had one, suffixed); see the
// top of this file for when it runs on the shared queue instead.
func (b *boxRoute) exec(ctx workflow.Context, opts workflow.ActivityOptions, name string, in, out any) error {
	for repicks := 0; ; repicks++ {
		o := opts
		routed := b != nil && b.queue != "" && repicks <= maxRepicks
		if routed {
			o.TaskQueue, o.ScheduleToStartTimeout = b.queue, boxScheduleToStart
		}
		if b != nil && b.moves > 0 && o.ActivityID != "" {
			o.ActivityID = fmt.Sprintf("%s-%d", opts.ActivityID, b.moves)
		}
		err := workflow.ExecuteActivity(workflow.WithActivityOptions(ctx, o), name, in).Get(ctx, out)
		if !routed || !scheduleToStartTimedOut(err) {
			return err
		}
		workflow.GetLogger(ctx).Warn("box worker gone or swamped: its box work moves", "workspace", b.workspaceID, "task_queue", b.queue, "activity", name)
		b.avoid = append(b.avoid, b.queue)
		b.moves++
		if repicks == maxRepicks {
			b.queue = "" // this activity and the rest go to the shared queue
			continue
		}
		q, cerr := claimBoxQueue(ctx, b.workspaceID, b.avoid)
		if cerr != nil {
			q = "" // the shared queue
		}
		b.queue = q
	}
}

func scheduleToStartTimedOut(err error) bool {
	var te *temporal.TimeoutError
	return errors.As(err, &te) && te.TimeoutType() == enumspb.TIMEOUT_TYPE_SCHEDULE_TO_START
}
