package reconcile

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestBoxValidation(t *testing.T) {
	t.Parallel()
	good := Box{InstanceID: "i-0123456789abcdef0", OSUser: "ubuntu", PluginRoot: "/opt/agent/plugins"}
	require.NoError(t, good.Validate())
	for desc, mut := range map[string]func(*Box){
		"instance": func(t *Box) { t.InstanceID = "i-0; reboot" },
		"user":     func(t *Box) { t.OSUser = "root; id" },
		"relative": func(t *Box) { t.PluginRoot = "opt/plugins" },
		"dotdot":   func(t *Box) { t.PluginRoot = "/opt/../etc" },
		"quote":    func(t *Box) { t.PluginRoot = "/opt/'x" },
		"trailing": func(t *Box) { t.PluginRoot = "/opt/plugins/" },
	} {
		tg := good
		mut(&tg)
		require.Error(t, tg.Validate(), desc)
	}
}
