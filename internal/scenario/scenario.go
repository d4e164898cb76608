// Package scenario is the demo's five workspaces: what each box's boot
// install put on it, what is declared, and what must hold after its
// reconcile. The demo runs them on the embedded stack; the fault suite runs
// them on the production-shaped one (temporal-server, three workers, the
// starter), so both check the same stories.
package scenario

import (
	"fmt"
	"maps"

	"github.com/plugin-reconciler/plugin-reconciler/workflows"
)

// Declared is every workspace's declared plugin set.
var Declared = []workflows.Plugin{
	{Name: "github-tools", Version: "1.2.0"},
	{Name: "mcp-postgres", Version: "0.4.1"},
	{Name: "code-review", Version: "2.0.0"},
	{Name: "slack-notify", Version: "1.0.3"},
	{Name: "sub-agent.planner", Version: "0.9.0"},
}

// Stale is the outdated bundle one workspace's boot installed.
var Stale = workflows.Plugin{Name: "github-tools", Version: "1.1.0"}

// Bundles is what the catalog must hold for the scenarios to boot.
func Bundles() []workflows.Plugin { return append(append([]workflows.Plugin{}, Declared...), Stale) }

// Workspace is one workspace of the scenario and what must hold after its
// reconcile.
type Workspace struct {
	ID             string
	Story          string
	Boot           map[string]string // what the box's boot install put on it: name -> version
	WantDeliveries int
	WantRestarts   int
}

// Workspaces are the five: three fully boot-installed (nothing to do, no
// restart), one whose boot install missed two plugins, one with a stale
// version (each: the deliveries, then one restart).
func Workspaces() []Workspace {
	all := map[string]string{}
	for _, p := range Declared {
		all[p.Name] = p.Version
	}
	missing := maps.Clone(all)
	delete(missing, "mcp-postgres")
	delete(missing, "slack-notify")
	stale := maps.Clone(all)
	stale[Stale.Name] = Stale.Version
	return []Workspace{
		{"ws-demo-1", "all 5 plugins boot-installed", maps.Clone(all), 0, 0},
		{"ws-demo-2", "all 5 plugins boot-installed", maps.Clone(all), 0, 0},
		{"ws-demo-3", "all 5 plugins boot-installed", maps.Clone(all), 0, 0},
		{"ws-demo-4", "boot install missed 2 plugins", missing, 2, 1},
		{"ws-demo-5", "github-tools boot-installed at stale 1.1.0", stale, 1, 1},
	}
}

// Check says which expectation did not hold (nil when all did), given the
// reconcile's deliveries and the restarts counted on the box.
func (w Workspace) Check(delivered, restarts int) error {
	switch {
	case delivered != w.WantDeliveries:
		return fmt.Errorf("%d deliveries, expected %d", delivered, w.WantDeliveries)
	case restarts != w.WantRestarts:
		return fmt.Errorf("box restarted %d times, expected %d", restarts, w.WantRestarts)
	}
	return nil
}
