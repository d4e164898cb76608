package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

type entry struct {
	hdr  tar.Header
	body string
}

func file(name, body string) entry {
	return entry{tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(body))}, body}
}

const manifest = "name: demo\nversion: 1.0.0\n"

// build makes a tar.gz of entries; extra is appended after the gzip stream,
// tarExtra after the tar stream inside it.
func build(t testing.TB, entries []entry, tarExtra, extra []byte) []byte {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, e := range entries {
		h := e.hdr
		require.NoError(t, tw.WriteHeader(&h))
		if h.Typeflag == tar.TypeReg {
			_, err := tw.Write([]byte(e.body))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	tb.Write(tarExtra)
	var gb bytes.Buffer
	zw := gzip.NewWriter(&gb)
	_, err := zw.Write(tb.Bytes())
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	gb.Write(extra)
	return gb.Bytes()
}

func TestCheckAcceptsAWellFormedBundle(t *testing.T) {
	data := build(t, []entry{
		file("plugin.yaml", manifest),
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, ""},
		file("bin/tool", "#!/bin/sh\n"),
		{tar.Header{Name: "bin/alias", Typeflag: tar.TypeSymlink, Linkname: "tool"}, ""},
		{tar.Header{Name: "lib-link", Typeflag: tar.TypeSymlink, Linkname: "bin/../bin/tool"}, ""},
		{tar.Header{Name: "copy", Typeflag: tar.TypeLink, Linkname: "bin/tool"}, ""},
	}, nil, nil)
	m, err := Check(data)
	require.NoError(t, err)
	require.Equal(t, "demo", m.Name)
	require.Equal(t, "1.0.0", m.Version)
}

func TestCheckRejects(t *testing.T) {
	ok := file("plugin.yaml", manifest)
	// A header that declares more bytes than follow: the tar stream is cut.
	var lying bytes.Buffer
	tw := tar.NewWriter(&lying)
	require.NoError(t, tw.WriteHeader(&tar.Header{Name: "plugin.yaml", Typeflag: tar.TypeReg, Mode: 0o644, Size: 1000}))
	_, _ = tw.Write([]byte(manifest))
	var lyingGz bytes.Buffer
	zw := gzip.NewWriter(&lyingGz)
	_, _ = zw.Write(lying.Bytes())
	_ = zw.Close()

	tests := []struct {
		desc string
		data []byte
		want string
	}{
		{"not gzip", []byte("plain text"), "not gzip"},
		{"dot-dot entry", build(t, []entry{ok, file("../evil", "x")}, nil, nil), "leaves the plugin"},
		{"nested dot-dot", build(t, []entry{ok, file("a/../../evil", "x")}, nil, nil), "leaves the plugin"},
		{"absolute path", build(t, []entry{ok, file("/etc/cron.d/evil", "x")}, nil, nil), "absolute path"},
		{"symlink absolute", build(t, []entry{ok, {tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "/etc"}, ""}}, nil, nil), "absolute path"},
		{"symlink outside", build(t, []entry{ok, {tar.Header{Name: "a/l", Typeflag: tar.TypeSymlink, Linkname: "../../x"}, ""}}, nil, nil), "outside"},
		{"write through symlink", build(t, []entry{ok, {tar.Header{Name: "l", Typeflag: tar.TypeSymlink, Linkname: "sub"}, ""}, file("l/x", "x")}, nil, nil), "written through \"l\", which is a symlink"},
		{"hard link outside", build(t, []entry{ok, {tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "../../etc/passwd"}, ""}}, nil, nil), "hard link"},
		{"hard link absolute", build(t, []entry{ok, {tar.Header{Name: "h", Typeflag: tar.TypeLink, Linkname: "/etc/passwd"}, ""}}, nil, nil), "hard link"},
		{"char device", build(t, []entry{ok, {tar.Header{Name: "null", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}, ""}}, nil, nil), "only files"},
		{"block device", build(t, []entry{ok, {tar.Header{Name: "sda", Typeflag: tar.TypeBlock}, ""}}, nil, nil), "only files"},
		{"fifo", build(t, []entry{ok, {tar.Header{Name: "p", Typeflag: tar.TypeFifo}, ""}}, nil, nil), "only files"},
		{"setuid", build(t, []entry{ok, {tar.Header{Name: "su", Typeflag: tar.TypeReg, Mode: 0o4755}, ""}}, nil, nil), "set-id"},
		{"duplicate manifest", build(t, []entry{ok, file("plugin.yaml", "name: other\nversion: 1\n")}, nil, nil), "duplicate"},
		{"no manifest", build(t, []entry{file("README", "x")}, nil, nil), "no regular file plugin.yaml"},
		{"manifest symlink", build(t, []entry{{tar.Header{Name: "plugin.yaml", Typeflag: tar.TypeSymlink, Linkname: "x"}, ""}}, nil, nil), "no regular file"},
		{"bad manifest", build(t, []entry{file("plugin.yaml", "name: ../x\nversion: 1\n")}, nil, nil), "invalid manifest"},
		{"size lies", lyingGz.Bytes(), "cut short"},
		{"data after tar", build(t, []entry{ok}, []byte("extra"), nil), "after the archive"},
		{"data after gzip", build(t, []entry{ok}, nil, []byte("more")), "after the gzip"},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := Check(tt.data)
			require.ErrorIs(t, err, ErrRejected)
			require.ErrorContains(t, err, tt.want)
		})
	}
}

func TestPackIsDeterministicAndChecked(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plugin.yaml"), []byte(manifest), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bin", "tool"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	require.NoError(t, os.Symlink("bin/tool", filepath.Join(dir, "tool")))

	a, err := Pack(dir)
	require.NoError(t, err)
	// Times and owners on disk must not matter.
	require.NoError(t, os.Chtimes(filepath.Join(dir, "bin", "tool"), epoch.AddDate(3, 0, 0), epoch.AddDate(3, 0, 0)))
	b, err := Pack(dir)
	require.NoError(t, err)
	require.Equal(t, Digest(a), Digest(b))

	m, err := Check(a)
	require.NoError(t, err)
	require.Equal(t, "demo", m.Name)

	require.NoError(t, os.WriteFile(filepath.Join(dir, "bin", "tool"), []byte("changed"), 0o755))
	c, err := Pack(dir)
	require.NoError(t, err)
	require.NotEqual(t, Digest(a), Digest(c))
}

func TestPackRefusesABadManifest(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "plugin.yaml"), []byte("not: a manifest\n"), 0o644))
	_, err := Pack(dir)
	require.ErrorIs(t, err, ErrRejected)
}

func BenchmarkPackAndCheck(b *testing.B) {
	dir := b.TempDir()
	require.NoError(b, os.WriteFile(filepath.Join(dir, "plugin.yaml"), []byte(manifest), 0o644))
	for i := range 50 {
		p := filepath.Join(dir, "lib", "f"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		require.NoError(b, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(b, os.WriteFile(p, bytes.Repeat([]byte("plugin code\n"), 1000), 0o644))
	}
	b.ReportAllocs()
	for b.Loop() {
		data, err := Pack(dir)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := Check(data); err != nil {
			b.Fatal(err)
		}
	}
}
