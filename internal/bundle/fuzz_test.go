package bundle_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle"
	"github.com/plugin-reconciler/plugin-reconciler/internal/bundle/bundletest"
	"github.com/plugin-reconciler/plugin-reconciler/internal/reconcile"
)

// Every hostile shape the fault suite feeds the reconciler is refused, with
// a reason.
func TestHostileShapesAreRefused(t *testing.T) {
	for _, s := range bundletest.Hostile {
		t.Run(s.Name, func(t *testing.T) {
			_, err := bundle.Inspect(s.Bundle(t, "evil"))
			require.ErrorIs(t, err, bundle.ErrRejected)
		})
	}
}

// Links that resolve inside the plugin, through directories only, are
// accepted: to a file, to a directory, to the plugin's own top, up and
// down again.
func TestLinksThatStayInsideAreAccepted(t *testing.T) {
	data := bundletest.Raw(t, "fine",
		tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o755, Size: 1},
		tar.Header{Name: "lib/", Typeflag: tar.TypeDir, Mode: 0o555},
		tar.Header{Name: "lib/tool", Typeflag: tar.TypeSymlink, Linkname: "../bin/tool"},
		tar.Header{Name: "current", Typeflag: tar.TypeSymlink, Linkname: "bin"},
		tar.Header{Name: "self", Typeflag: tar.TypeSymlink, Linkname: "."},
		tar.Header{Name: "later", Typeflag: tar.TypeSymlink, Linkname: "not-yet/../bin/tool"},
	)
	_, err := bundle.Inspect(data)
	require.NoError(t, err)
}

// FuzzInspect checks Inspect against the box's own unpacker, so that no
// archive it accepts can reach outside the plugin once unpacked: every
// accepted archive is unpacked by tar with the install's flags into a
// scratch directory, the install's own file is written as the install
// writes it, and then every path there, its links resolved by the kernel,
// must stay inside, and nothing may appear beside it.
//
// The input is a small text form of an archive (see buildSpec), so that
// the fuzzer's mutations make archives rather than broken headers; the
// seed corpus holds every hostile shape of the fault suite.
func FuzzInspect(f *testing.F) {
	if _, err := exec.LookPath("tar"); err != nil {
		f.Skip("no tar")
	}
	for _, s := range bundletest.Hostile {
		f.Add(specOf(f, s.Bundle(f, "evil"), s.Cut))
	}
	f.Add([]byte("d bin\nf bin/tool\nl bin/alias\ttool\nl lib-link\tbin/../bin/tool\nh copy\tbin/tool\nr ro\nf ro/x\n"))
	f.Add([]byte("d a\nl a/up\t..\nl b\ta/up/../b2\nl c\t../c\n"))
	f.Fuzz(func(t *testing.T, spec []byte) {
		data, ok := buildSpec(spec)
		if !ok {
			return
		}
		if _, err := bundle.Inspect(data); err != nil {
			return
		}
		checkUnpacked(t, data)
	})
}

// buildSpec makes a tar.gz from its text form: one entry per line, "T name"
// or "T name<TAB>target", T one of f (file), d (directory), r (read-only
// directory), x (read-only file), l (symlink), h (hard link), c (character
// device), p (fifo); a line "! n" cuts n bytes off the end. A valid
// plugin.yaml is added last unless an entry has that name.
func buildSpec(spec []byte) ([]byte, bool) {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	cut := 0
	manifest := false
	for _, line := range strings.Split(string(spec), "\n") {
		if len(line) < 3 || line[1] != ' ' {
			continue
		}
		name, target, _ := strings.Cut(line[2:], "\t")
		h := tar.Header{Name: name, Mode: 0o644, Format: tar.FormatPAX}
		switch line[0] {
		case '!':
			cut, _ = strconv.Atoi(name)
			continue
		case 'f':
			h.Typeflag, h.Size = tar.TypeReg, 1
		case 'x':
			h.Typeflag, h.Size, h.Mode = tar.TypeReg, 1, 0o444
		case 'd':
			h.Typeflag, h.Mode = tar.TypeDir, 0o755
		case 'r':
			h.Typeflag, h.Mode = tar.TypeDir, 0o555
		case 'l':
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, target, 0o777
		case 'h':
			h.Typeflag, h.Linkname = tar.TypeLink, target
		case 'c':
			h.Typeflag, h.Devmajor, h.Devminor = tar.TypeChar, 1, 3
		case 'p':
			h.Typeflag = tar.TypeFifo
		default:
			continue
		}
		if path.Clean(name) == reconcile.ManifestFile {
			manifest = true
		}
		if tw.WriteHeader(&h) != nil {
			return nil, false
		}
		if h.Size > 0 {
			_, _ = tw.Write([]byte("x"))
		}
	}
	if !manifest {
		m := reconcile.Manifest{Name: "fuzz", Version: "1.0.0"}.Marshal()
		_ = tw.WriteHeader(&tar.Header{Name: reconcile.ManifestFile, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(m))})
		_, _ = tw.Write(m)
	}
	if tw.Close() != nil {
		return nil, false
	}
	var gb bytes.Buffer
	zw := gzip.NewWriter(&gb)
	_, _ = zw.Write(tb.Bytes())
	_ = zw.Close()
	out := gb.Bytes()
	if cut > 0 && cut < len(out) {
		out = out[:len(out)-cut]
	}
	return out, true
}

// specOf is a bundle's text form (the inverse of buildSpec, for the seed
// corpus).
func specOf(t testing.TB, data []byte, cut int) []byte {
	var b strings.Builder
	for _, h := range bundletest.Entries(t, data) {
		typ := map[byte]byte{tar.TypeReg: 'f', tar.TypeDir: 'd', tar.TypeSymlink: 'l', tar.TypeLink: 'h', tar.TypeChar: 'c', tar.TypeFifo: 'p'}[h.Typeflag]
		switch {
		case typ == 0 || h.Name == reconcile.ManifestFile:
			continue
		case typ == 'd' && h.Mode&0o200 == 0:
			typ = 'r'
		case typ == 'f' && h.Mode&0o200 == 0:
			typ = 'x'
		}
		fmt.Fprintf(&b, "%c %s", typ, h.Name)
		if h.Linkname != "" {
			b.WriteString("\t" + h.Linkname)
		}
		b.WriteString("\n")
	}
	if cut > 0 {
		fmt.Fprintf(&b, "! %d\n", cut)
	}
	return []byte(b.String())
}

// checkUnpacked unpacks data as the install does and fails if anything
// reaches outside the scratch directory.
func checkUnpacked(t *testing.T, data []byte) {
	base := t.TempDir()
	outer := filepath.Join(base, "outer")
	scratch := filepath.Join(outer, "scratch")
	require.NoError(t, os.MkdirAll(scratch, 0o755))
	tarCmd := exec.Command("tar", "-xzf", "-", "-C", scratch, "--no-same-owner", "--no-same-permissions")
	tarCmd.Stdin = bytes.NewReader(data)
	_ = tarCmd.Run() // a tar that fails part-way must not have escaped either
	// The file the install writes once unpacked, written as it writes it.
	write := exec.Command("sh", "-c", `rm -rf -- "$1/`+bundle.DigestFile+`" && set -C && printf 'sha256:x\n' >"$1/`+bundle.DigestFile+`"`, "sh", scratch)
	out, err := write.CombinedOutput()
	require.NoError(t, err, "the install's own file: %s", out)
	t.Cleanup(func() { _ = exec.Command("chmod", "-R", "u+rwX", base).Run() })

	for _, dir := range []string{base, outer} {
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		require.Len(t, ents, 1, "something appeared beside the plugin in %s", dir)
	}
	err = filepath.WalkDir(scratch, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable (a 0555 tree is readable; 0000 is not ours)
		}
		got, err := kernelTarget(p)
		if err != nil {
			return nil // a loop: the kernel refuses it
		}
		if got != scratch && !strings.HasPrefix(got, scratch+"/") {
			return fmt.Errorf("%s resolves to %s, outside the plugin", strings.TrimPrefix(p, scratch+"/"), got)
		}
		return nil
	})
	require.NoError(t, err)
}

var errLoop = errors.New("too many links")

// kernelTarget is where the kernel lands when it opens p, walking one
// component at a time and following every link as it meets it; past a
// component that does not exist, the rest is applied as written (where a
// create would land, or no further: the kernel stops there).
func kernelTarget(p string) (string, error) {
	rest := strings.Split(strings.TrimPrefix(p, "/"), "/")
	cur := "/"
	for links := 0; len(rest) > 0; {
		part := rest[0]
		rest = rest[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, part)
		fi, err := os.Lstat(next)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > 40 {
			return "", errLoop
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	return cur, nil
}
