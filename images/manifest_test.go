package images

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

var sum = strings.Repeat("0123456789abcdef", 4)

func TestParseManifest(t *testing.T) {
	t.Parallel()
	june := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name, in string
		want     Manifest
		wantErr  string
	}{
		{
			name: "make rootfs",
			in: `{"name":"minimal","arch":"amd64","suite":"bookworm","epoch":1748736000,"recipe_sha256":"r",
				"packages":[{"name":"bash","version":"5.2.15-2+b8"}],"sha256":"` + sum + `","size":8388608,"extra":{"kept":true}}`,
			want: Manifest{Name: "minimal", Arch: "amd64", Suite: "bookworm", Epoch: june, RecipeSHA256: "r",
				Packages: []Package{{"bash", "5.2.15-2+b8"}}, SHA256: sum, Size: 8388608},
		},
		{
			name: "recipe and nested image",
			in:   `{"recipe":"minimal","arch":"arm64","epoch":"20250601T000000Z","image":{"sha256":"` + strings.ToUpper(sum) + `","size":4096}}`,
			want: Manifest{Name: "minimal", Arch: "arm64", Epoch: june, SHA256: sum, Size: 4096},
		},
		{
			name: "recipe fields",
			in:   `{"name":"minimal","arch":"amd64","size":"2GiB","packages":["bash","kmod"],"image":{"sha256":"` + sum + `","size":2147483648}}`,
			want: Manifest{Name: "minimal", Arch: "amd64", Packages: []Package{{Name: "bash"}, {Name: "kmod"}}, SHA256: sum, Size: 2147483648},
		},
		{name: "source_date_epoch", in: `{"arch":"armhf","source_date_epoch":1748736000,"sha256":"` + sum + `"}`, want: Manifest{Arch: "armhf", Epoch: june, SHA256: sum}},
		{name: "epoch as a string of seconds", in: `{"arch":"armhf","epoch":"1748736000","sha256":"` + sum + `"}`, want: Manifest{Arch: "armhf", Epoch: june, SHA256: sum}},
		{name: "epoch RFC 3339", in: `{"arch":"armhf","epoch":"2025-06-01T02:00:00+02:00","sha256":"` + sum + `"}`, want: Manifest{Arch: "armhf", Epoch: june, SHA256: sum}},
		{name: "epoch date", in: `{"arch":"armhf","epoch":"2025-06-01","sha256":"` + sum + `"}`, want: Manifest{Arch: "armhf", Epoch: june, SHA256: sum}},
		{name: "no epoch", in: `{"arch":"armhf","epoch":null,"sha256":"` + sum + `"}`, want: Manifest{Arch: "armhf", SHA256: sum}},
		{name: "bad epoch", in: `{"arch":"armhf","epoch":"soon","sha256":"` + sum + `"}`, wantErr: `manifest epoch: "soon"`},
		{name: "negative epoch", in: `{"arch":"armhf","epoch":-1,"sha256":"` + sum + `"}`, wantErr: "out of range"},
		{name: "no sha256", in: `{"arch":"amd64"}`, wantErr: "no sha256"},
		{name: "short sha256", in: `{"arch":"amd64","sha256":"abc"}`, wantErr: `sha256 "abc"`},
		{name: "no arch", in: `{"sha256":"` + sum + `"}`, wantErr: "no arch"},
		{name: "bad arch", in: `{"arch":"../x","sha256":"` + sum + `"}`, wantErr: `arch "../x"`},
		{name: "negative size", in: `{"arch":"amd64","size":-1,"sha256":"` + sum + `"}`, wantErr: "negative"},
		{name: "not JSON", in: `arch: amd64`, wantErr: "decoding manifest"},
	}
	for _, tt := range tests {
		got, err := ParseManifest([]byte(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: ParseManifest(%s) = %v; want error %q", tt.name, tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: ParseManifest(%s): %v", tt.name, tt.in, err)
			continue
		}
		if string(got.Raw) != tt.in {
			t.Errorf("%s: Raw = %q; want the input", tt.name, got.Raw)
		}
		if d := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(Manifest{}, "Raw"), cmpopts.EquateEmpty()); d != "" {
			t.Errorf("%s: ParseManifest (-want +got):\n%s", tt.name, d)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	f.Add([]byte(`{"name":"minimal","arch":"amd64","epoch":1748736000,"sha256":"` + sum + `","size":1}`))
	f.Add([]byte(`{"recipe":"m","arch":"arm64","epoch":"20250601T000000Z","image":{"sha256":"` + sum + `"}}`))
	f.Add([]byte(`{"arch":"armhf","epoch":"2025-06-01","sha256":"` + sum + `","packages":[{"name":"a","version":"1"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		// What parses is usable: a valid sha256 and arch, a non-negative
		// size, an epoch that formats as a version date.
		if !validSHA256(m.SHA256) || !archRE.MatchString(m.Arch) || m.Size < 0 {
			t.Fatalf("ParseManifest(%q) = %+v: invalid fields accepted", b, m)
		}
		if d := m.Epoch.UTC().Format("20060102"); !m.Epoch.IsZero() && len(d) != 8 {
			t.Fatalf("epoch %v formats as %q", m.Epoch, d)
		}
		if string(m.Raw) != string(b) {
			t.Fatal("Raw differs from the input")
		}
	})
}
