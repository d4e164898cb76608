// Package workflowstest helps tests run the reconcile workflows in
// Temporal's test environment.
package workflowstest

import (
	"sync"

	"github.com/stretchr/testify/mock"
	"go.temporal.io/sdk/testsuite"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Permits is a sweep's restart gate, mocked: it grants every permit asked
// for, at once, and counts what it saw.
type Permits struct {
	mu                  sync.Mutex
	requested, released []workflows.PermitRequest
}

// GrantPermits stands in for the sweep whose workflow ID is gate: every
// restart permit a reconcile under test asks it for is granted at once.
func GrantPermits(env *testsuite.TestWorkflowEnvironment, gate string) *Permits {
	p := &Permits{}
	env.OnSignalExternalWorkflow(mock.Anything, gate, "", workflows.SignalPermitRequest, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			r, _ := arg.(workflows.PermitRequest)
			p.mu.Lock()
			p.requested = append(p.requested, r)
			p.mu.Unlock()
			env.RegisterDelayedCallback(func() { env.SignalWorkflow(workflows.SignalPermit, r) }, 0)
			return nil
		})
	env.OnSignalExternalWorkflow(mock.Anything, gate, "", workflows.SignalPermitRelease, mock.Anything).Return(
		func(_, _, _, _ string, arg any) error {
			r, _ := arg.(workflows.PermitRequest)
			p.mu.Lock()
			p.released = append(p.released, r)
			p.mu.Unlock()
			return nil
		})
	return p
}

// Requested and Released list the permit requests and releases the gate
// received, in order.
func (p *Permits) Requested() []workflows.PermitRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]workflows.PermitRequest(nil), p.requested...)
}

// Released: see Requested.
func (p *Permits) Released() []workflows.PermitRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]workflows.PermitRequest(nil), p.released...)
}
