package onbox

import (
	"context"
	"fmt"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// removeScript removes the plugin's directory atomically (root, name,
// state and the plugin's paths come from its environment, see pathEnv):
// under the plugin's lock, and for the rename itself under the box lock
// with the swap's journal lines, it renames whatever is at the plugin's
// path aside (a symlink is renamed, never followed) and then deletes what
// it renamed, whatever its modes. A plugin the box does not have is a no-op
// ("absent"), journaling nothing; the remains of an interrupted install
// are cleaned either way. It prints the identity the removal was journaled
// with.
const removeScript = `set -euC
umask 022
` + purgeFunc + `if [ ! -d "$root" ]; then echo absent; exit 0; fi
mkdir -p "$state"
exec 9>>"$lock"
flock 9
purge "$stage"; purge "$stagefile"; purge "$aside"
if [ ! -e "$dst" ] && [ ! -L "$dst" ]; then purge "$old"; echo absent; exit 0; fi
ident() { sh -c %s </dev/null 2>/dev/null 8>&- 9>&- | head -n 1; }
exec 8>>"$state/lock"
flock -s 8
trap '' HUP INT TERM
id=$(ident)
if [ -z "$id" ]; then echo "cannot read the runtime identity" >&2; exit 68; fi
if ! purge "$old"; then echo "cannot remove $old" >&2; exit 72; fi
printf '%%s %%s\n' "$name" "$id" >>"$state/journal"
mv -T -- "$dst" "$aside"
after=$(ident) || after=
[ -n "$after" ] && id=$after
printf '%%s %%s\n' "$name" "$id" >>"$state/journal"
flock -u 8
purge "$aside" || :
echo "removed $id"
`

// Removed is what Remove did.
type Removed struct {
	// Changed: the plugin was removed; false when the box did not have it.
	Changed bool
	// Identity is the runtime identity the removal was journaled with.
	Identity string
}

// Remove removes the plugin's directory from the box's plugin root
// atomically (see removeScript). Removing what is not there is a no-op.
func (o *Ops) Remove(ctx context.Context, t reconcile.Box, name string) (Removed, error) {
	if _, err := pluginDir(t, name); err != nil {
		return Removed{}, err
	}
	script := fmt.Sprintf("root=%s state=%s name=%s %s\nexport root state name dst stage stagefile old aside lock\n",
		quote(t.PluginRoot), quote(stateDir(t)), quote(name), pathEnv(PathsOf(t, name))) + fmt.Sprintf(removeScript, quote(o.cfg.IdentityCommand))
	changed, id, err := o.change(ctx, t, "remove "+name+" from", script, nil, "absent", "removed")
	return Removed{Changed: changed, Identity: id}, err
}
