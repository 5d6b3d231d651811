package config

import (
	"math"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// mac is a net.HardwareAddr that decodes from text, as later config
// sections will use for boards.
type mac net.HardwareAddr

func (m *mac) UnmarshalText(b []byte) error {
	hw, err := net.ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = mac(hw)
	return nil
}

type board struct {
	Image string `yaml:"image"`
	Extra []int  `yaml:"extra"`
}

// kitchenSink exercises every kind the decoder supports.
type kitchenSink struct {
	Str      string                `yaml:"str"`
	Bool     bool                  `yaml:"bool"`
	Int8     int8                  `yaml:"int8"`
	Uint16   uint16                `yaml:"uint16"`
	Float    float64               `yaml:"float"`
	Dur      time.Duration         `yaml:"dur"`
	IntPtr   *int                  `yaml:"int_ptr"`
	Board    *board                `yaml:"board"`
	AddrPort netip.AddrPort        `yaml:"addr_port"`
	Addr     netip.Addr            `yaml:"addr"`
	Prefix   netip.Prefix          `yaml:"prefix"`
	MAC      mac                   `yaml:"mac"`
	List     []string              `yaml:"list"`
	Map      map[string]int        `yaml:"map"`
	ByIP     map[netip.Addr]string `yaml:"by_ip"`
	Untagged string
	Skipped  string   `yaml:"-"`
	Chan     chan int `yaml:"chan"`
}

// decodeString decodes in into out and returns the decoding errors.
func decodeString(in string, out any) error {
	l := &errorList{file: "t.yaml", lines: map[string]int{}, bad: map[string]bool{}}
	decodeFile(l, []byte(in), out)
	return l.err()
}

func TestDecode(t *testing.T) {
	t.Parallel()
	in := `str: hello
bool: TRUE
int8: -128
uint16: 0xffff
float: 1_000.5
dur: 1h2m
int_ptr: 7
board:
  image: minimal
  extra: [1, 2]
addr_port: "[fe80::1%eth0]:69"
addr: 192.0.2.1
prefix: 10.0.0.0/8
mac: 52:54:00:12:34:56
list: [a, "b", 3]
map: {a: 1, b: 2}
by_ip:
  192.0.2.1: one
  ::1: two
untagged: yes
`
	var got kitchenSink
	if err := decodeString(in, &got); err != nil {
		t.Fatalf("decode(%q) error = %v; want nil", in, err)
	}
	seven := 7
	want := kitchenSink{
		Str:      "hello",
		Bool:     true,
		Int8:     -128,
		Uint16:   0xffff,
		Float:    1000.5,
		Dur:      time.Hour + 2*time.Minute,
		IntPtr:   &seven,
		Board:    &board{Image: "minimal", Extra: []int{1, 2}},
		AddrPort: netip.MustParseAddrPort("[fe80::1%eth0]:69"),
		Addr:     netip.MustParseAddr("192.0.2.1"),
		Prefix:   netip.MustParsePrefix("10.0.0.0/8"),
		MAC:      mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56},
		List:     []string{"a", "b", "3"},
		Map:      map[string]int{"a": 1, "b": 2},
		ByIP:     map[netip.Addr]string{netip.MustParseAddr("192.0.2.1"): "one", netip.MustParseAddr("::1"): "two"},
		Untagged: "yes",
	}
	opts := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	if diff := cmp.Diff(want, got, opts, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); diff != "" {
		t.Errorf("decode(%q) mismatch (-want +got):\n%s", in, diff)
	}
}

func TestDecodeFloats(t *testing.T) {
	t.Parallel()
	tests := map[string]float64{
		"float: .inf":  math.Inf(1),
		"float: -.Inf": math.Inf(-1),
		"float: 3":     3,
		"float: 1e3":   1000,
	}
	for in, want := range tests {
		var got kitchenSink
		if err := decodeString(in, &got); err != nil || got.Float != want {
			t.Errorf("decode(%q) = %v, %v; want %v, nil", in, got.Float, err, want)
		}
	}
	var got kitchenSink
	if err := decodeString("float: .nan", &got); err != nil || !math.IsNaN(got.Float) {
		t.Errorf("decode(%q) = %v, %v; want NaN, nil", "float: .nan", got.Float, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		in   string
		want string
	}{
		"bool from string":     {"bool: yes", `t.yaml:1: bool: want true or false, got string "yes"`},
		"bool from integer":    {"bool: 1", `t.yaml:1: bool: want true or false, got integer "1"`},
		"int8 overflow":        {"int8: 128", "t.yaml:1: int8: 128 out of range for int8"},
		"int from exponent":    {"int8: 1e3", `t.yaml:1: int8: want an integer, got number "1e3"`},
		"negative uint":        {"uint16: -1", `t.yaml:1: uint16: want a non-negative integer, got integer "-1"`},
		"uint overflow":        {"uint16: 65536", "t.yaml:1: uint16: 65536 out of range for uint16"},
		"float from string":    {"float: abc", `t.yaml:1: float: want a number, got string "abc"`},
		"float from list":      {"float: [1]", "t.yaml:1: float: want a number, got a list"},
		"pointer wrong kind":   {"int_ptr: x", `t.yaml:1: int_ptr: want an integer, got string "x"`},
		"struct in pointer":    {"board:\n  image: a\n  imgae: b", "t.yaml:3: board.imgae: unknown field (known: image, extra)"},
		"nested list element":  {"board:\n  extra:\n    - 1\n    - x", `t.yaml:4: board.extra[1]: want an integer, got string "x"`},
		"text unmarshaler":     {"\naddr_port: 1.2.3.4", `t.yaml:2: addr_port: invalid value "1.2.3.4": not an ip:port`},
		"text from mapping":    {"addr: {a: 1}", "t.yaml:1: addr: want a string, got a mapping"},
		"mac":                  {"mac: 52:54", `t.yaml:1: mac: invalid value "52:54": address 52:54: invalid MAC address`},
		"map wrong kind":       {"map: [a]", "t.yaml:1: map: want a mapping, got a list"},
		"map value":            {"map:\n  a: 1\n  b: x", `t.yaml:3: map["b"]: want an integer, got string "x"`},
		"map duplicate key":    {"map:\n  a: 1\n  a: 2", `t.yaml:3: map["a"]: duplicate key (first at line 2)`},
		"map non-scalar key":   {"map:\n  ? [a]\n  : 1", "t.yaml:2: map: want a string key, got a list"},
		"text key invalid":     {"by_ip:\n  nope: x", `t.yaml:2: by_ip["nope"]: invalid key "nope": ParseAddr("nope"): unable to parse IP`},
		"text key duplicate":   {"by_ip:\n  ::1: x\n  0::1: y", `t.yaml:3: by_ip["0::1"]: duplicate key (first at line 2)`},
		"skipped field":        {"Skipped: x", "t.yaml:1: Skipped: unknown field"},
		"unsupported type":     {"chan: 1", "t.yaml:1: chan: cannot decode into Go type chan int"},
		"alias in nested list": {"list: [&a x, *a]", "t.yaml:1: list[1]: YAML aliases are not supported"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var got kitchenSink
			err := decodeString(tt.in, &got)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("decode(%q) error = %v; want substring %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestParentPath(t *testing.T) {
	t.Parallel()
	tests := map[string]string{
		"images[1].name": "images[1]",
		"images[1]":      "images",
		"images":         "",
		"":               "",
		`a["k"].b`:       `a["k"]`,
	}
	for in, want := range tests {
		if got := parentPath(in); got != want {
			t.Errorf("parentPath(%q) = %q; want %q", in, got, want)
		}
	}
}
