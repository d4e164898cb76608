package onbox

import (
	"context"
	"fmt"

	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// removeScript removes <root>/<name> atomically: under the plugin's lock,
// and for the rename itself under the box lock with the swap's journal
// lines, it renames the plugin's directory aside (a symlink is renamed,
// never followed) and then deletes what it renamed. A plugin the box does
// not have is a no-op ("absent"), journaling nothing; the remains of an
// interrupted install are cleaned either way. It prints the identity the
// removal was journaled with.
const removeScript = `set -eu
umask 022
root=%s name=%s
dst="$root/$name" aside="$root/.removing-$name" stage="$root/.staging-$name" old="$root/.previous-$name" state="$root/.reconciler"
if [ ! -d "$root" ]; then echo absent; exit 0; fi
mkdir -p "$state"
exec 9>"$root/.$name.lock"
flock 9
rm -rf -- "$stage" "$stage.tgz" "$aside"
if [ ! -e "$dst" ] && [ ! -L "$dst" ]; then rm -rf -- "$old"; echo absent; exit 0; fi
ident() { sh -c %s </dev/null 2>/dev/null 8>&- 9>&- | head -n 1; }
exec 8>"$state/lock"
flock -s 8
trap '' HUP INT TERM
id=$(ident)
if [ -z "$id" ]; then echo "cannot read the runtime identity" >&2; exit 68; fi
printf '%%s %%s\n' "$name" "$id" >>"$state/journal"
mv -T -- "$dst" "$aside"
rm -rf -- "$old"
after=$(ident) || after=
[ -n "$after" ] && id=$after
printf '%%s %%s\n' "$name" "$id" >>"$state/journal"
flock -u 8
rm -rf -- "$aside"
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
	script := fmt.Sprintf(removeScript, quote(t.PluginRoot), quote(name), quote(o.cfg.IdentityCommand))
	changed, id, err := o.change(ctx, t, "remove "+name+" from", script, nil, "absent", "removed")
	return Removed{Changed: changed, Identity: id}, err
}
