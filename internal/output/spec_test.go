package output

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Spec // Attrs not compared
	}{
		{"type=registry", Spec{Type: TypeRegistry, Tar: true, Push: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=image,push=true", Spec{Type: TypeRegistry, Tar: true, Push: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=image", Spec{Type: TypeStore, Tar: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=oci,dest=out.tar", Spec{Type: TypeOCI, Dest: "out.tar", Tar: true, OCIMediaTypes: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=oci,dest=dir,tar=false", Spec{Type: TypeOCI, Dest: "dir", Tar: false, OCIMediaTypes: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=oci,dest=o.tar,oci-mediatypes=false", Spec{Type: TypeOCI, Dest: "o.tar", Tar: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=docker,dest=img.tar", Spec{Type: TypeDocker, Dest: "img.tar", Tar: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=docker", Spec{Type: TypeDocker, Tar: true, Compression: "gzip", CompressionLevel: -1}},
		{"type=local,dest=out", Spec{Type: TypeLocal, Dest: "out", Tar: true, Compression: "gzip", CompressionLevel: -1}},
		{"./out", Spec{Type: TypeLocal, Dest: "./out", Tar: true, Compression: "gzip", CompressionLevel: -1}},
		{`type=image,"name=a:1,b",push=true`, Spec{Type: TypeRegistry, Tar: true, Push: true, Compression: "gzip", CompressionLevel: -1,
			Names: []string{"docker.io/library/a:1", "docker.io/library/b:latest"}}},
		{"type=registry,compression=zstd,compression-level=19,force-compression=true,oci-mediatypes=true",
			Spec{Type: TypeRegistry, Tar: true, Push: true, Compression: "zstd", CompressionLevel: 19, ForceCompression: true, OCIMediaTypes: true}},
		{"TYPE=registry,Compression=uncompressed", Spec{Type: TypeRegistry, Tar: true, Push: true, Compression: "uncompressed", CompressionLevel: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			got.Attrs = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct{ in, wantText string }{
		{"", "empty"},
		{"-", "stdout"},
		{"type=oci,dest=-", "stdout"},
		{"dest=out", "type is required"},
		{"type=bogus", `unknown type "bogus"`},
		{"type=tar,dest=x", "not supported"},
		{"type=oci", "dest is required"},
		{"type=local", "dest is required"},
		{"type=registry,dest=x", "dest does not apply"},
		{"type=registry,frobnicate=1", "unknown attribute(s) frobnicate"},
		{"type=registry,push=false", "always pushes"},
		{"type=docker,dest=x,tar=false", "only to type=oci"},
		{"type=oci,dest=x,tar=maybe", "not a boolean"},
		{"type=registry,compression=lz4", `unknown compression "lz4"`},
		{"type=registry,compression=estargz", "estargz is not supported"},
		{"type=registry,compression-level=x", "not a non-negative integer"},
		{"type=registry,compression=gzip,compression-level=12", "out of range"},
		{"type=registry,name=UPPER", "image name"},
		{"type=registry,novalue", "not key=value"},
		{`type=registry,"name=a`, "invalid --output"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse(%q) succeeded", tt.in)
			}
			if !errors.Is(err, ErrInvalidSpec) {
				t.Errorf("err %v is not ErrInvalidSpec", err)
			}
			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("err = %q, want it to mention %q", err, tt.wantText)
			}
		})
	}
}
