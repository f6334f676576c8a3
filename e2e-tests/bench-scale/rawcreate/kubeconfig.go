package main

// The kubeconfig subset this program needs (server, CA, bearer token or client
// certificate of the current context), read with a small YAML subset parser so the
// program stays standard-library only. It understands what kubectl and the local
// cluster write: block mappings, block sequences (indented or not under their key),
// plain and quoted scalars, comments, and `{}` / `[]`. Anything else is an error, not
// a guess.

import (
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Credentials are what a request to the apiserver needs.
type Credentials struct {
	Server     string
	CAPEM      []byte
	Token      string
	ClientCert []byte
	ClientKey  []byte
	Insecure   bool
}

type yamlLine struct {
	indent int
	text   string
	num    int
}

func splitYAMLLines(src string) ([]yamlLine, error) {
	var out []yamlLine
	for i, raw := range strings.Split(strings.ReplaceAll(src, "\r\n", "\n"), "\n") {
		if strings.Contains(raw, "\t") && strings.TrimLeft(raw, " ") != strings.TrimLeft(raw, " \t") {
			return nil, fmt.Errorf("line %d: tab indentation is not YAML", i+1)
		}
		trimmed := strings.TrimLeft(raw, " ")
		if trimmed == "" || strings.HasPrefix(trimmed, "#") || trimmed == "---" {
			continue
		}
		out = append(out, yamlLine{indent: len(raw) - len(trimmed), text: strings.TrimRight(trimmed, " "), num: i + 1})
	}
	return out, nil
}

type yamlParser struct {
	lines []yamlLine
	pos   int
}

// parseYAML parses the subset described above into map[string]any / []any / string.
func parseYAML(src string) (any, error) {
	lines, err := splitYAMLLines(src)
	if err != nil {
		return nil, err
	}
	if len(lines) == 0 {
		return map[string]any{}, nil
	}
	p := &yamlParser{lines: lines}
	v, err := p.block(lines[0].indent)
	if err != nil {
		return nil, err
	}
	if p.pos < len(p.lines) {
		l := p.lines[p.pos]
		return nil, fmt.Errorf("line %d: unexpected indentation", l.num)
	}
	return v, nil
}

func (p *yamlParser) block(indent int) (any, error) {
	l := p.lines[p.pos]
	if l.text == "-" || strings.HasPrefix(l.text, "- ") {
		return p.sequence(indent)
	}
	return p.mapping(indent)
}

func (p *yamlParser) sequence(indent int) ([]any, error) {
	var items []any
	for p.pos < len(p.lines) {
		l := p.lines[p.pos]
		if l.indent != indent || !(l.text == "-" || strings.HasPrefix(l.text, "- ")) {
			break
		}
		rest := strings.TrimLeft(strings.TrimPrefix(l.text, "-"), " ")
		if rest == "" {
			p.pos++
			if p.pos < len(p.lines) && p.lines[p.pos].indent > indent {
				v, err := p.block(p.lines[p.pos].indent)
				if err != nil {
					return nil, err
				}
				items = append(items, v)
			} else {
				items = append(items, "")
			}
			continue
		}
		// "- key: value" starts a mapping whose keys sit at the column after "- ".
		col := indent + (len(l.text) - len(rest))
		if _, _, isKey := splitKey(rest); isKey {
			p.lines[p.pos] = yamlLine{indent: col, text: rest, num: l.num}
			v, err := p.mapping(col)
			if err != nil {
				return nil, err
			}
			items = append(items, v)
			continue
		}
		s, err := scalar(rest, l.num)
		if err != nil {
			return nil, err
		}
		items = append(items, s)
		p.pos++
	}
	return items, nil
}

func (p *yamlParser) mapping(indent int) (map[string]any, error) {
	m := map[string]any{}
	for p.pos < len(p.lines) {
		l := p.lines[p.pos]
		if l.indent < indent {
			break
		}
		if l.indent > indent {
			return nil, fmt.Errorf("line %d: unexpected indentation", l.num)
		}
		key, value, ok := splitKey(l.text)
		if !ok {
			return nil, fmt.Errorf("line %d: expected `key: value`, got %q", l.num, l.text)
		}
		p.pos++
		if value != "" {
			s, err := scalar(value, l.num)
			if err != nil {
				return nil, err
			}
			m[key] = s
			continue
		}
		if p.pos < len(p.lines) {
			next := p.lines[p.pos]
			isSeq := next.text == "-" || strings.HasPrefix(next.text, "- ")
			if next.indent > indent || (next.indent == indent && isSeq) {
				v, err := p.block(next.indent)
				if err != nil {
					return nil, err
				}
				m[key] = v
				continue
			}
		}
		m[key] = ""
	}
	return m, nil
}

// splitKey splits `key: value` (value may be empty); keys may be quoted.
func splitKey(text string) (key, value string, ok bool) {
	if strings.HasPrefix(text, `"`) || strings.HasPrefix(text, `'`) {
		q := text[:1]
		end := strings.Index(text[1:], q)
		if end < 0 {
			return "", "", false
		}
		key = text[1 : end+1]
		rest := text[end+2:]
		if rest != ":" && !strings.HasPrefix(rest, ": ") {
			return "", "", false
		}
		return key, strings.TrimSpace(strings.TrimPrefix(rest, ":")), true
	}
	if i := strings.Index(text, ": "); i > 0 {
		return text[:i], strings.TrimSpace(text[i+2:]), true
	}
	if strings.HasSuffix(text, ":") && len(text) > 1 {
		return text[:len(text)-1], "", true
	}
	return "", "", false
}

func scalar(v string, line int) (any, error) {
	switch {
	case v == "{}":
		return map[string]any{}, nil
	case v == "[]":
		return []any{}, nil
	case strings.HasPrefix(v, `"`):
		s, err := strconv.Unquote(stripComment(v, true))
		if err != nil {
			return nil, fmt.Errorf("line %d: bad double-quoted string %s", line, v)
		}
		return s, nil
	case strings.HasPrefix(v, `'`):
		v = stripComment(v, true)
		if len(v) < 2 || !strings.HasSuffix(v, `'`) {
			return nil, fmt.Errorf("line %d: bad single-quoted string %s", line, v)
		}
		return strings.ReplaceAll(v[1:len(v)-1], "''", "'"), nil
	case strings.HasPrefix(v, "{") || strings.HasPrefix(v, "[") || strings.HasPrefix(v, "|") || strings.HasPrefix(v, ">") || strings.HasPrefix(v, "&") || strings.HasPrefix(v, "*"):
		return nil, fmt.Errorf("line %d: %q is outside the YAML subset this reader understands", line, v)
	}
	return stripComment(v, false), nil
}

// stripComment drops a trailing ` # comment`.
func stripComment(v string, quoted bool) string {
	if quoted {
		q := v[:1]
		if end := strings.Index(v[1:], q); end >= 0 && q == `'` {
			// '' escapes: find the real closing quote.
			i := 1
			for i < len(v) {
				if v[i] == '\'' {
					if i+1 < len(v) && v[i+1] == '\'' {
						i += 2
						continue
					}
					return v[:i+1]
				}
				i++
			}
		}
		if q == `"` {
			for i := 1; i < len(v); i++ {
				if v[i] == '\\' {
					i++
					continue
				}
				if v[i] == '"' {
					return v[:i+1]
				}
			}
		}
		return v
	}
	if i := strings.Index(v, " #"); i >= 0 {
		return strings.TrimRight(v[:i], " ")
	}
	return v
}

func named(list any, name, what string) (map[string]any, error) {
	items, _ := list.([]any)
	for _, it := range items {
		m, _ := it.(map[string]any)
		if m != nil && m["name"] == name {
			inner, _ := m[what].(map[string]any)
			if inner == nil {
				return nil, fmt.Errorf("kubeconfig: %s %q has no %s mapping", what, name, what)
			}
			return inner, nil
		}
	}
	return nil, fmt.Errorf("kubeconfig: no %s named %q", what, name)
}

func str(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// fileOrData returns base64 `<key>-data`, or the file `<key>` (relative to the kubeconfig).
func fileOrData(m map[string]any, key, dir string) ([]byte, error) {
	if d := str(m, key+"-data"); d != "" {
		b, err := base64.StdEncoding.DecodeString(d)
		if err != nil {
			return nil, fmt.Errorf("kubeconfig: %s-data is not base64: %w", key, err)
		}
		return b, nil
	}
	if f := str(m, key); f != "" {
		if !filepath.IsAbs(f) {
			f = filepath.Join(dir, f)
		}
		return os.ReadFile(f)
	}
	return nil, nil
}

// credentialsFromKubeconfig resolves the current context (or the one named) of a kubeconfig.
func credentialsFromKubeconfig(src, dir, context string) (*Credentials, error) {
	doc, err := parseYAML(src)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	root, ok := doc.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("kubeconfig: not a mapping")
	}
	if context == "" {
		context = str(root, "current-context")
	}
	if context == "" {
		return nil, fmt.Errorf("kubeconfig: no current-context and no --context")
	}
	ctx, err := named(root["contexts"], context, "context")
	if err != nil {
		return nil, err
	}
	cluster, err := named(root["clusters"], str(ctx, "cluster"), "cluster")
	if err != nil {
		return nil, err
	}
	c := &Credentials{Server: str(cluster, "server"), Insecure: str(cluster, "insecure-skip-tls-verify") == "true"}
	if c.Server == "" {
		return nil, fmt.Errorf("kubeconfig: cluster %q has no server", str(ctx, "cluster"))
	}
	if c.CAPEM, err = fileOrData(cluster, "certificate-authority", dir); err != nil {
		return nil, err
	}
	if userName := str(ctx, "user"); userName != "" {
		user, err := named(root["users"], userName, "user")
		if err != nil {
			return nil, err
		}
		c.Token = str(user, "token")
		if c.Token == "" {
			if tf := str(user, "tokenFile"); tf != "" {
				b, err := os.ReadFile(tf)
				if err != nil {
					return nil, fmt.Errorf("kubeconfig: tokenFile: %w", err)
				}
				c.Token = strings.TrimSpace(string(b))
			}
		}
		if c.ClientCert, err = fileOrData(user, "client-certificate", dir); err != nil {
			return nil, err
		}
		if c.ClientKey, err = fileOrData(user, "client-key", dir); err != nil {
			return nil, err
		}
	}
	if c.Token == "" && c.ClientCert == nil {
		return nil, fmt.Errorf("kubeconfig: context %q has neither a token nor a client certificate", context)
	}
	return c, nil
}
