package fleet

import (
	"context"
	"fmt"

	"github.com/plugin-reconciler/plugin-reconciler/internal/catalog"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Bundles serves packed plugin bundles: the catalog.
type Bundles interface {
	Bundle(ctx context.Context, name, version string) (catalog.Bundle, error)
}

// Boot starts a box whose boot install put the given plugins (name ->
// version, packed by the catalog) under its plugin root: the fixture every
// suite, the demo and the benchmark boot their boxes with.
func (f *Fleet) Boot(ctx context.Context, cat Bundles, plugins map[string]string) (*Box, error) {
	boot := map[string][]byte{}
	for name, version := range plugins {
		b, err := cat.Bundle(ctx, name, version)
		if err != nil {
			return nil, fmt.Errorf("boot %s@%s: %w", name, version, err)
		}
		boot[name] = b.Data
	}
	return f.AddBox(BoxSpec{BootInstalled: boot})
}

// Workspace is the box as the reconciler registers it for workspace id:
// its instance, login user, plugin root and pinned host key.
func (b *Box) Workspace(id string) reconcile.Box {
	return reconcile.Box{
		ID: id, InstanceID: b.InstanceID, Region: b.fleet.AWS.Region, AvailabilityZone: b.AvailabilityZone,
		OSUser: b.fleet.User(), PluginRoot: b.PluginRoot, HostKey: b.HostKey,
	}
}
