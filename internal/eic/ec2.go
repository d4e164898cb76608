package eic

import (
	"context"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// InstanceRunning fails with the instance's typed error when EC2 says it is
// not running or does not exist; a failure to ask is no answer (nil).
func (a *Access) InstanceRunning(ctx context.Context, t reconcile.Box) error {
	_, _, err := a.describe(ctx, t)
	var state *InstanceStateError
	var unknown *UnknownInstanceError
	if errors.As(err, &state) || errors.As(err, &unknown) {
		return err
	}
	return nil
}

// RebootInstance reboots the instance through EC2. The shared connection to
// it is dropped; the next operation reconnects with a fresh key.
func (a *Access) RebootInstance(ctx context.Context, t reconcile.Box) error {
	if err := t.Validate(); err != nil {
		return err
	}
	if _, err := a.cfg.EC2.RebootInstances(ctx, &ec2.RebootInstancesInput{InstanceIds: []string{t.InstanceID}}, a.regionOpt(t)); err != nil {
		return fmt.Errorf("reboot %s: %w", t.InstanceID, err)
	}
	a.mu.Lock()
	c := a.conns[connKey(t)]
	a.mu.Unlock()
	if c != nil {
		a.evict(c)
	}
	return nil
}
