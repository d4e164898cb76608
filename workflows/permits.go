package workflows

import (
	"slices"
	"time"

	"go.temporal.io/sdk/workflow"
)

// Restart permits pace a fleet sweep's restarts: a reconcile the sweep runs
// asks its restartGate for a permit before its restart and gives it back
// after; the sweep's permitPool hands out at most MaxRestartsInFlight.

// permitWait bounds how long a restart waits for a sweep's permit: a sweep
// that is gone must not hold a restart back for ever.
const permitWait = 30 * time.Minute

// restartGate is the workflow ID of the sweep whose permits pace a
// reconcile's restarts ("" for none).
type restartGate string

// acquire takes a restart permit from the sweep that runs this reconcile,
// if any, and returns the function that gives it back. If the sweep cannot be
// reached, or is slow past permitWait, the restart goes ahead: pacing must
// never cost a box its restart. Each request carries its round (seq), and
// a permit granted for an earlier round's request (one that came after
// that request's wait had timed out) is not taken for this one.
func (gate restartGate) acquire(ctx workflow.Context, seq int) (release func()) {
	if gate == "" {
		return func() {}
	}
	if workflow.GetVersion(ctx, "permit-rounds", workflow.DefaultVersion, 1) == workflow.DefaultVersion {
		seq = 0 // a run started before permits named their round
	}
	self := workflow.GetInfo(ctx).WorkflowExecution.ID
	req := PermitRequest{WorkflowID: self, Seq: seq}
	if err := workflow.SignalExternalWorkflow(ctx, string(gate), "", SignalPermitRequest, req).Get(ctx, nil); err != nil {
		workflow.GetLogger(ctx).Warn("restart gate unreachable, restarting without a permit", "gate", gate, "error", err)
		return func() {}
	}
	got, timedOut := false, false
	tctx, cancelTimer := workflow.WithCancel(ctx)
	timer := workflow.NewTimer(tctx, permitWait)
	sel := workflow.NewSelector(ctx)
	sel.AddReceive(workflow.GetSignalChannel(ctx, SignalPermit), func(c workflow.ReceiveChannel, _ bool) {
		var grant PermitRequest
		c.Receive(ctx, &grant)
		// Seq 0: a sweep that does not name rounds.
		got = seq == 0 || grant.Seq == 0 || grant.Seq == seq
	})
	sel.AddFuture(timer, func(workflow.Future) { timedOut = true })
	for !got && !timedOut {
		sel.Select(ctx)
	}
	cancelTimer()
	if !got {
		workflow.GetLogger(ctx).Warn("no restart permit in time, restarting anyway", "gate", gate)
	}
	// Released in every case: the sweep frees the permit it granted, or
	// drops the request it has not granted yet.
	return func() {
		dctx, _ := workflow.NewDisconnectedContext(ctx)
		_ = workflow.SignalExternalWorkflow(dctx, string(gate), "", SignalPermitRelease, req).Get(dctx, nil)
	}
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
