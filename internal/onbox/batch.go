package onbox

import (
	"context"
	"fmt"
	"time"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Requests of one kind that reach a box close together share a command: a
// reconcile probes, and delivers, each plugin in an activity of its own,
// and those reach a box within moments of one another. At most one command
// of a kind runs on a box at a time; the requests that arrive meanwhile
// (while it runs, or while the connection is being dialled) wait together
// and go in the next one. Nothing waits on purpose: a lone request runs at
// once. The command runs detached from any one caller, so that a caller's
// cancellation does not fail the others; a request whose caller has gone
// before its command starts is left out, and a command whose every caller
// has gone is cancelled.

// batcher coalesces one kind of request (Req) per box; run answers a
// batch's requests in order, in one command.
type batcher[Req, Ans any] struct {
	o       *Ops
	what    string
	timeout time.Duration // of one command, from its start
	// full says a batch takes no more requests: the next ones open a batch
	// of their own, which runs after it.
	full func(reqs []Req) bool
	run  func(ctx context.Context, t reconcile.Box, reqs []Req, sent func(int64)) ([]Ans, error)

	boxes map[string]*batchBox[Req, Ans] // by box, under o.mu
}

// batchBox is a box's batching state: the batch still open to new requests
// and the turn that lets one command run at a time.
type batchBox[Req, Ans any] struct {
	open  map[string]*batch[Req, Ans] // by batchKey (plugin root, host key)
	turn  chan struct{}
	users int
}

// batch is the requests waiting for, or running in, one command.
type batch[Req, Ans any] struct {
	t       reconcile.Box
	reqs    []Req
	callers []*batchCaller
	done    chan struct{}
	answers []Ans // set before done is closed, in the order of reqs
	ran     []bool
	err     error
	cancel  context.CancelFunc // set when the command starts
	waiting int                // callers still waiting
}

// batchCaller is one request's caller.
type batchCaller struct {
	ctx      context.Context
	progress func(sent int64)
}

func batchKey(t reconcile.Box) string { return t.PluginRoot + "\x00" + t.HostKey }

func newBatcher[Req, Ans any](o *Ops, what string, timeout time.Duration, full func([]Req) bool,
	run func(ctx context.Context, t reconcile.Box, reqs []Req, sent func(int64)) ([]Ans, error)) *batcher[Req, Ans] {
	return &batcher[Req, Ans]{o: o, what: what, timeout: timeout, full: full, run: run, boxes: map[string]*batchBox[Req, Ans]{}}
}

// do joins (or opens) the box's open batch and waits for its answer to req.
func (b *batcher[Req, Ans]) do(ctx context.Context, t reconcile.Box, req Req, progress func(int64)) (Ans, error) {
	var zero Ans
	key := t.Region + "/" + t.InstanceID + "/" + t.OSUser
	b.o.mu.Lock()
	select {
	case <-b.o.stop:
		b.o.mu.Unlock()
		return zero, fmt.Errorf("%s on %s: box operations are closed", b.what, t.InstanceID)
	default:
	}
	box := b.boxes[key]
	if box == nil {
		box = &batchBox[Req, Ans]{open: map[string]*batch[Req, Ans]{}, turn: make(chan struct{}, 1)}
		b.boxes[key] = box
	}
	bt := box.open[batchKey(t)]
	if bt == nil || b.full(bt.reqs) {
		bt = &batch[Req, Ans]{t: t, done: make(chan struct{})}
		box.open[batchKey(t)] = bt
		box.users++
		b.o.wg.Add(1)
		go b.runBatch(key, box, bt)
	}
	i := len(bt.reqs)
	bt.reqs = append(bt.reqs, req)
	bt.callers = append(bt.callers, &batchCaller{ctx: ctx, progress: progress})
	bt.waiting++
	b.o.mu.Unlock()

	select {
	case <-bt.done:
	case <-ctx.Done():
		b.o.mu.Lock()
		bt.waiting--
		if bt.waiting == 0 && bt.cancel != nil {
			bt.cancel() // nobody waits for this command any more
		}
		b.o.mu.Unlock()
		return zero, ctx.Err()
	}
	switch {
	case bt.err != nil:
		return zero, bt.err
	case !bt.ran[i]:
		return zero, fmt.Errorf("%s on %s: %w", b.what, t.InstanceID, context.Canceled)
	}
	return bt.answers[i], nil
}

// runBatch waits for the box's turn, closes the batch to new requests,
// leaves out those whose callers have gone, and runs the rest as one
// command.
func (b *batcher[Req, Ans]) runBatch(key string, box *batchBox[Req, Ans], bt *batch[Req, Ans]) {
	defer b.o.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-b.o.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	// A box without a connection is dialled first: the requests arriving
	// during the dial (the key push and handshake take several round trips)
	// join this batch.
	dialErr := b.o.access.Warm(ctx, bt.t)
	select {
	case box.turn <- struct{}{}:
		defer func() { <-box.turn }()
	case <-ctx.Done():
	}
	// A new variable, not ctx reassigned: the goroutine above reads ctx.
	cmdCtx, stopTimer := context.WithTimeout(ctx, b.timeout) // the command's own time
	defer stopTimer()
	b.o.mu.Lock()
	if box.open[batchKey(bt.t)] == bt {
		delete(box.open, batchKey(bt.t))
	}
	bt.ran = make([]bool, len(bt.reqs))
	var reqs []Req
	var live []int
	for i, c := range bt.callers {
		if c.ctx.Err() == nil {
			reqs, live = append(reqs, bt.reqs[i]), append(live, i)
		}
	}
	bt.cancel = cancel
	if bt.waiting == 0 {
		cancel()
	}
	b.o.mu.Unlock()

	sent := func(n int64) {
		for _, i := range live {
			if c := bt.callers[i]; c.progress != nil && c.ctx.Err() == nil {
				c.progress(n)
			}
		}
	}
	switch {
	case dialErr != nil:
		bt.err = dialErr
	case cmdCtx.Err() != nil:
		bt.err = fmt.Errorf("%s on %s: %w", b.what, bt.t.InstanceID, cmdCtx.Err())
	case len(reqs) == 0:
	default:
		var answers []Ans
		answers, bt.err = b.run(cmdCtx, bt.t, reqs, sent)
		if bt.err == nil && len(answers) != len(reqs) {
			bt.err = fmt.Errorf("%s on %s: %d answers for %d requests", b.what, bt.t.InstanceID, len(answers), len(reqs))
		}
		if bt.err == nil {
			bt.answers = make([]Ans, len(bt.reqs))
			for j, i := range live {
				bt.answers[i], bt.ran[i] = answers[j], true
			}
		}
	}
	close(bt.done)

	b.o.mu.Lock()
	box.users--
	if box.users == 0 {
		delete(b.boxes, key)
	}
	b.o.mu.Unlock()
}
