package reconcile

import (
	"hash/fnv"
	"slices"
)

// TaskQueue is the task queue every worker polls: the workflows, the
// store's work, and the box work of a run that has no box route.
const TaskQueue = "plugin-reconcile"

// BoxQueue is the task queue of one worker's own, named after its
// identity: the box work of the workspaces routed to it, so that a
// reconcile's probes, deliveries, removals and restart all use that
// worker's one connection to the box.
func BoxQueue(identity string) string { return TaskQueue + "@" + identity }

// ClaimInput asks which worker a workspace's box work goes to.
type ClaimInput struct {
	WorkspaceID string
	// Avoid are box queues found dead: an activity sat on one past its
	// schedule-to-start timeout (its worker is gone).
	Avoid []string `json:",omitempty"`
}

// BoxRoute is where a workspace's box activities run ("": the shared
// task queue, no affinity).
type BoxRoute struct {
	TaskQueue string `json:",omitempty"`
}

// PickBoxQueue is the box queue a workspace's box work goes to among the
// live ones, skipping those to avoid: rendezvous (highest random weight)
// hashing, so every caller that sees the same workers picks the same one
// (a parent and its children re-picking after a worker died meet on the
// same worker), and a worker joining or leaving moves only the workspaces
// it takes or held. "" when none is left.
func PickBoxQueue(workspaceID string, live, avoid []string) string {
	best, bestWeight := "", uint64(0)
	for _, q := range live {
		if slices.Contains(avoid, q) {
			continue
		}
		h := fnv.New64a()
		h.Write([]byte(workspaceID))
		h.Write([]byte{0})
		h.Write([]byte(q))
		if w := h.Sum64(); best == "" || w > bestWeight || (w == bestWeight && q < best) {
			best, bestWeight = q, w
		}
	}
	return best
}
