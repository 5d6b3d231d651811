package config

import (
	"bytes"
	"cmp"
	"encoding"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// fieldError is one problem in a config file, reported as
// "file:line: path: msg". Line is 0 when no line is known (the field is
// missing, or the Config was built by hand) and path is empty for problems
// with the file as a whole.
type fieldError struct {
	file string
	line int
	path string
	err  error
}

func (e *fieldError) Error() string {
	var b strings.Builder
	b.WriteString(e.file)
	if e.line > 0 {
		fmt.Fprintf(&b, ":%d", e.line)
	}
	for _, s := range []string{e.path, e.err.Error()} {
		if s == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(s)
	}
	return b.String()
}

func (e *fieldError) Unwrap() error { return e.err }

// errorList collects the errors of one file, so that the user sees all of
// them at once.
type errorList struct {
	file  string
	lines map[string]int  // field path → line, filled in by the decoder
	bad   map[string]bool // field paths that failed to decode
	errs  []*fieldError
}

// add records err for the field at path. The line is that of the field or,
// if the field is absent from the file, of its nearest enclosing field.
// Errors about fields inside a field that failed to decode are dropped:
// they would only repeat the decoding error.
func (l *errorList) add(path string, err error) {
	for p := path; p != ""; p = parentPath(p) {
		if l.bad[p] {
			return
		}
	}
	l.errs = append(l.errs, &fieldError{file: l.file, line: l.lineOf(path), path: path, err: err})
}

func (l *errorList) addf(path, format string, args ...any) {
	l.add(path, fmt.Errorf(format, args...))
}

// addAt records err at an explicit line; the decoder uses it because it
// knows the node it is looking at.
func (l *errorList) addAt(line int, path string, err error) {
	l.errs = append(l.errs, &fieldError{file: l.file, line: line, path: path, err: err})
}

func (l *errorList) lineOf(path string) int {
	for p := path; p != ""; p = parentPath(p) {
		if n, ok := l.lines[p]; ok {
			return n
		}
	}
	return 0
}

// err returns the collected errors sorted by line (errors without a line
// first), joined with [errors.Join], or nil.
func (l *errorList) err() error {
	if len(l.errs) == 0 {
		return nil
	}
	slices.SortStableFunc(l.errs, func(a, b *fieldError) int { return cmp.Compare(a.line, b.line) })
	errs := make([]error, len(l.errs))
	for i, e := range l.errs {
		errs[i] = e
	}
	return errors.Join(errs...)
}

// parentPath returns the path of the field enclosing path:
// "images[1].name" → "images[1]" → "images" → "".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// joinPath returns the path of the field name in parent. Names that are
// not plain identifiers (only unknown keys can be) are quoted, so that an
// error message stays on one line.
func joinPath(parent, name string) string {
	if !plainName.MatchString(name) {
		return fmt.Sprintf("%s[%q]", parent, name)
	}
	if parent == "" {
		return name
	}
	return parent + "." + name
}

var plainName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// yamlLine matches the line number in a go.yaml.in/yaml/v3 syntax error.
var yamlLine = regexp.MustCompile(`(?s)^yaml: line (\d+): (.*)$`)

// decodeFile parses data as a single YAML document and decodes it strictly
// into out, which must be a pointer to a struct. Fields absent from the file
// keep the values out already has. It records each decoded field's line in
// l.lines and reports problems to l. It reports false if the file as a
// whole is unusable (a syntax error, several documents, or a document that
// is not a mapping), so that validating it would be pointless; a syntax error
// is then the only error, since nothing after it can be trusted.
func decodeFile(l *errorList, data []byte, out any) bool {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if err != io.EOF { // io.EOF: empty file, or only comments
			l.addAt(syntaxError(err))
			return false
		}
		return true
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
	case err != nil:
		l.addAt(syntaxError(err))
		return false
	default:
		l.addAt(extra.Line, "", errors.New("multiple YAML documents; want one"))
		return false
	}
	if len(doc.Content) != 1 {
		return true
	}
	d := decoder{l: l}
	return d.decode(reflect.ValueOf(out).Elem(), doc.Content[0], "", doc.Content[0].Line)
}

func syntaxError(err error) (line int, path string, _ error) {
	msg := err.Error()
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	return line, "", errors.New(msg)
}

// decoder is a strict, reflection-based decoder from a yaml.Node tree.
// It supports structs (fields named by their `yaml:"name"` tag, or the
// lowercased field name; `yaml:"-"` skips a field), slices, maps with string
// or [encoding.TextUnmarshaler] keys, pointers, strings, bools, integers,
// floats, [time.Duration] written as "30s", and any type whose pointer
// implements [encoding.TextUnmarshaler]. It rejects unknown and duplicate
// keys, values of the wrong kind, and aliases. A null value leaves the
// destination unchanged, so defaults set before decoding survive "key: ~".
type decoder struct {
	l *errorList
}

var (
	durationType        = reflect.TypeFor[time.Duration]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decode decodes n into v. path names the field and line is where to report
// problems with it: the line of its key, or of the node for list items.
// It reports false if the value was rejected as a whole (wrong kind, bad
// scalar), and then marks path as bad so that validation does not report it
// again. Errors inside a mapping or list are reported on their own paths.
func (d *decoder) decode(v reflect.Value, n *yaml.Node, path string, line int) bool {
	if path != "" {
		d.l.lines[path] = line
	}
	ok := d.decodeValue(v, n, path, line)
	if !ok && path != "" {
		d.l.bad[path] = true
	}
	return ok
}

func (d *decoder) decodeValue(v reflect.Value, n *yaml.Node, path string, line int) bool {
	if n.Kind == yaml.AliasNode {
		return d.fail(line, path, "YAML aliases are not supported")
	}
	if isNull(n) {
		return true
	}
	t := v.Type()
	if reflect.PointerTo(t).Implements(textUnmarshalerType) {
		if n.Kind != yaml.ScalarNode {
			return d.wrongKind(line, path, "a string", n)
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.l.addAt(line, path, fmt.Errorf("invalid value %q: %w", n.Value, err))
			return false
		}
		return true
	}
	if t == durationType {
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
			return d.wrongKind(line, path, `a duration like "30s"`, n)
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil {
			return d.fail(line, path, "invalid duration %q (want a number with a unit, like \"30s\" or \"1m30s\")", n.Value)
		}
		v.SetInt(int64(dur))
		return true
	}
	switch t.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(t.Elem()))
		}
		return d.decodeValue(v.Elem(), n, path, line)
	case reflect.Struct:
		return d.decodeStruct(v, n, path, line)
	case reflect.Slice:
		return d.decodeSlice(v, n, path, line)
	case reflect.Map:
		return d.decodeMap(v, n, path, line)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return d.wrongKind(line, path, "a string", n)
		}
		v.SetString(n.Value)
		return true
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
			return d.wrongKind(line, path, "true or false", n)
		}
		v.SetBool(strings.EqualFold(n.Value, "true"))
		return true
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if !isNumber(n) {
			return d.wrongKind(line, path, "an integer", n)
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, t.Bits())
		if err != nil {
			return d.badInt(line, path, "an integer", n, t, err)
		}
		v.SetInt(i)
		return true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if !isNumber(n) {
			return d.wrongKind(line, path, "a non-negative integer", n)
		}
		u, err := strconv.ParseUint(strings.ReplaceAll(n.Value, "_", ""), 0, t.Bits())
		if err != nil {
			return d.badInt(line, path, "a non-negative integer", n, t, err)
		}
		v.SetUint(u)
		return true
	case reflect.Float32, reflect.Float64:
		if !isNumber(n) {
			return d.wrongKind(line, path, "a number", n)
		}
		f, err := parseFloat(n.Value, t.Bits())
		if err != nil {
			return d.fail(line, path, "invalid number %q for %s", n.Value, t.Kind())
		}
		v.SetFloat(f)
		return true
	}
	// Only reachable through a schema change, and caught by its tests.
	return d.fail(line, path, "cannot decode into Go type %s", t)
}

func (d *decoder) decodeStruct(v reflect.Value, n *yaml.Node, path string, line int) bool {
	if n.Kind != yaml.MappingNode {
		return d.wrongKind(line, path, "a mapping", n)
	}
	t := v.Type()
	fields := map[string]int{} // yaml name → field index
	var names []string
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = i
		names = append(names, name)
	}
	seen := map[string]int{} // key → line
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.wrongKind(k.Line, path, "a string key", k)
			continue
		}
		p := joinPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			d.fail(k.Line, p, "duplicate key (first at line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		fi, known := fields[k.Value]
		if !known {
			d.fail(k.Line, p, "unknown field (known: %s)", strings.Join(names, ", "))
			continue
		}
		d.decode(v.Field(fi), val, p, k.Line)
	}
	return true
}

func (d *decoder) decodeSlice(v reflect.Value, n *yaml.Node, path string, line int) bool {
	if n.Kind != yaml.SequenceNode {
		return d.wrongKind(line, path, "a list", n)
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.decode(s.Index(i), item, fmt.Sprintf("%s[%d]", path, i), item.Line)
	}
	v.Set(s)
	return true
}

func (d *decoder) decodeMap(v reflect.Value, n *yaml.Node, path string, line int) bool {
	if n.Kind != yaml.MappingNode {
		return d.wrongKind(line, path, "a mapping", n)
	}
	t := v.Type()
	kt := t.Key()
	textKey := reflect.PointerTo(kt).Implements(textUnmarshalerType)
	if !textKey && kt.Kind() != reflect.String {
		return d.fail(line, path, "cannot decode into Go type %s", t)
	}
	if v.IsNil() {
		v.Set(reflect.MakeMapWithSize(t, len(n.Content)/2))
	}
	seen := map[any]int{} // decoded key → line
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.wrongKind(k.Line, path, "a string key", k)
			continue
		}
		p := fmt.Sprintf("%s[%q]", path, k.Value)
		key := reflect.New(kt).Elem()
		if textKey {
			if err := key.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(k.Value)); err != nil {
				d.l.addAt(k.Line, p, fmt.Errorf("invalid key %q: %w", k.Value, err))
				continue
			}
		} else {
			key.SetString(k.Value)
		}
		if first, dup := seen[key.Interface()]; dup {
			d.fail(k.Line, p, "duplicate key (first at line %d)", first)
			continue
		}
		seen[key.Interface()] = k.Line
		elem := reflect.New(t.Elem()).Elem()
		if d.decode(elem, val, p, k.Line) {
			v.SetMapIndex(key, elem)
		}
	}
	return true
}

func (d *decoder) fail(line int, path, format string, args ...any) bool {
	d.l.addAt(line, path, fmt.Errorf(format, args...))
	return false
}

// badInt reports an integer that strconv could not parse: out of range, or
// not an integer at all (YAML resolves 1e3 and 99999999999999999999 as
// floats).
func (d *decoder) badInt(line int, path, want string, n *yaml.Node, t reflect.Type, err error) bool {
	if errors.Is(err, strconv.ErrRange) {
		return d.fail(line, path, "%s out of range for %s", n.Value, t.Kind())
	}
	return d.wrongKind(line, path, want, n)
}

func (d *decoder) wrongKind(line int, path, want string, n *yaml.Node) bool {
	return d.fail(line, path, "want %s, got %s", want, describe(n))
}

// describe names a node for "want X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	case yaml.ScalarNode:
		kind := "string"
		switch n.ShortTag() {
		case "!!int":
			kind = "integer"
		case "!!float":
			kind = "number"
		case "!!bool":
			kind = "boolean"
		}
		v := n.Value
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return fmt.Sprintf("%s %q", kind, v)
	}
	return "a YAML document"
}

// isNumber reports whether n is a scalar that YAML resolved as a number.
func isNumber(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float")
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// parseFloat parses a YAML 1.2 float, including .inf and .nan.
func parseFloat(s string, bits int) (float64, error) {
	switch strings.ToLower(s) {
	case ".inf", "+.inf":
		return math.Inf(1), nil
	case "-.inf":
		return math.Inf(-1), nil
	case ".nan":
		return math.NaN(), nil
	}
	return strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), bits)
}
