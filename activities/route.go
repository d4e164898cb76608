package activities

import (
	"context"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// pollerFresh is how recently a worker must have polled to count as live.
// A worker polls again at least every minute (a long poll); one that died
// within the window is found by the schedule-to-start timeout of the first
// activity sent to it, and avoided.
const pollerFresh = 90 * time.Second

// ClaimBoxQueue picks the worker a workspace's box work goes to: among the
// workers polling the shared task queue (Temporal's own view of the pool,
// from DescribeTaskQueue), the one reconcile.PickBoxQueue picks, if its
// own box queue has a poller; else the next; "" (the shared queue, no
// affinity) when none does. The workers' pollers carry their identity,
// from which their box queues are named.
//
// Idempotent: it reads and writes nothing of ours; a duplicate attempt
// running at once sees the same pool and picks the same worker.
func (a *Activities) ClaimBoxQueue(ctx context.Context, in reconcile.ClaimInput) (reconcile.BoxRoute, error) {
	c := activity.GetClient(ctx)
	pool, err := c.DescribeTaskQueue(ctx, reconcile.TaskQueue, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
	if err != nil {
		return reconcile.BoxRoute{}, fmt.Errorf("describe task queue %s: %w", reconcile.TaskQueue, err)
	}
	var live []string
	for _, p := range freshPollers(pool) {
		live = append(live, reconcile.BoxQueue(p))
	}
	avoid := append([]string(nil), in.Avoid...)
	for {
		q := reconcile.PickBoxQueue(in.WorkspaceID, live, avoid)
		if q == "" {
			return reconcile.BoxRoute{}, nil
		}
		own, err := c.DescribeTaskQueue(ctx, q, enumspb.TASK_QUEUE_TYPE_ACTIVITY)
		if err == nil && len(freshPollers(own)) > 0 {
			return reconcile.BoxRoute{TaskQueue: q}, nil
		}
		avoid = append(avoid, q) // a worker that runs no box queue (or just died)
	}
}

// freshPollers are the identities of the pollers seen within pollerFresh.
func freshPollers(resp *workflowservice.DescribeTaskQueueResponse) []string {
	var out []string
	for _, p := range resp.GetPollers() {
		if t := p.GetLastAccessTime(); t != nil && time.Since(t.AsTime()) <= pollerFresh && p.GetIdentity() != "" {
			out = append(out, p.GetIdentity())
		}
	}
	return out
}
