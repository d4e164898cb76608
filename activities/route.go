// The enhanced DescribeTaskQueue is marked deprecated (for worker
// deployments), but it is the one that lists the pollers of every
// partition of a task queue; the legacy mode lists one partition's.
//lint:file-ignore SA1019 the enhanced DescribeTaskQueue merges every partition's pollers

package activities

import (
	"context"
	"fmt"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	taskqueuepb "go.temporal.io/api/taskqueue/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// pollerFresh is how recently a worker must have polled to count as live.
// A worker polls again at least every minute (a long poll, whose start and
// end both count); one that died within the window is found by the
// schedule-to-start timeout of the first activity sent to it, and avoided.
const pollerFresh = 70 * time.Second

// ClaimBoxQueue picks the worker a workspace's box work goes to: among the
// workers polling the shared task queue (Temporal's own view of the pool:
// the pollers of every partition, from the enhanced DescribeTaskQueue), the
// one reconcile.PickBoxQueue picks, if its own box queue has a fresh
// poller; else the next. When there is none, or Temporal cannot say, it
// answers "" (the shared queue): routing saves dials, it must never stop a
// reconcile. The workers' pollers carry their identity, from which their
// box queues are named.
//
// Idempotent: it reads and writes nothing of ours; a duplicate attempt
// running at once sees the same pool and picks the same worker.
func (a *Activities) ClaimBoxQueue(ctx context.Context, in reconcile.ClaimInput) (reconcile.BoxRoute, error) {
	c, ns := activity.GetClient(ctx), activity.GetInfo(ctx).WorkflowNamespace
	pool, err := pollers(ctx, c, ns, reconcile.TaskQueue)
	if err != nil {
		activity.GetLogger(ctx).Warn("no view of the worker pool: box work goes to the shared queue", "error", err)
		return reconcile.BoxRoute{}, nil
	}
	var live []string
	for _, p := range pool {
		live = append(live, reconcile.BoxQueue(p))
	}
	avoid := append([]string(nil), in.Avoid...)
	for {
		q := reconcile.PickBoxQueue(in.WorkspaceID, live, avoid)
		if q == "" {
			return reconcile.BoxRoute{}, nil
		}
		if own, err := pollers(ctx, c, ns, q); err == nil && len(own) > 0 {
			return reconcile.BoxRoute{TaskQueue: q}, nil
		}
		avoid = append(avoid, q) // a worker that runs no box queue (or just died)
	}
}

// pollers are the identities of a task queue's activity pollers, over all
// its partitions, seen within pollerFresh.
func pollers(ctx context.Context, c client.Client, namespace, taskQueue string) ([]string, error) {
	resp, err := c.WorkflowService().DescribeTaskQueue(ctx, &workflowservice.DescribeTaskQueueRequest{
		Namespace:      namespace,
		TaskQueue:      &taskqueuepb.TaskQueue{Name: taskQueue, Kind: enumspb.TASK_QUEUE_KIND_NORMAL},
		ApiMode:        enumspb.DESCRIBE_TASK_QUEUE_MODE_ENHANCED,
		TaskQueueTypes: []enumspb.TaskQueueType{enumspb.TASK_QUEUE_TYPE_ACTIVITY},
		ReportPollers:  true,
	})
	if err != nil {
		return nil, fmt.Errorf("describe task queue %s: %w", taskQueue, err)
	}
	var out []string
	for _, v := range resp.GetVersionsInfo() {
		for _, p := range v.GetTypesInfo()[int32(enumspb.TASK_QUEUE_TYPE_ACTIVITY)].GetPollers() {
			if t := p.GetLastAccessTime(); t != nil && time.Since(t.AsTime()) <= pollerFresh && p.GetIdentity() != "" {
				out = append(out, p.GetIdentity())
			}
		}
	}
	return out, nil
}
