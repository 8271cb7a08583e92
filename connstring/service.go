package connstring

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"strings"

	"github.com/pgtrust/pgtrust/failure"
)

// DefaultSysConfDir is libpq's SYSCONFDIR as Debian builds it: the
// directory of the system-wide pg_service.conf when PGSYSCONFDIR is unset.
const DefaultSysConfDir = "/etc/postgresql-common"

// serviceLineMax is the size of libpq's fgets buffer: a line (newline
// included) of this length or more is "too long".
const serviceLineMax = 1024 - 1

// applyService is libpq's parseServiceInfo: when a service is named (the
// service keyword, else PGSERVICE), its settings are looked up in
// PGSERVICEFILE, else ~/.pg_service.conf (when it exists), and then, if the
// service was not defined there, in PGSYSCONFDIR/pg_service.conf. A setting
// from the service fills only keywords the connection string did not give;
// it wins over the PG* environment, which is applied afterwards.
func applyService(settings map[string]string, env map[string]string, home string) error {
	service, ok := settings["service"]
	if !ok {
		service, ok = env["PGSERVICE"]
	}
	if !ok {
		return nil
	}
	found := false
	file, userFile := env["PGSERVICEFILE"]
	if !userFile && home != "" {
		file = home + "/.pg_service.conf"
		_, err := os.Stat(file)
		userFile = err == nil
	}
	if userFile {
		var err error
		if found, err = parseServiceFile(file, service, settings); err != nil || found {
			return err
		}
	}
	dir, set := env["PGSYSCONFDIR"]
	if !set {
		dir = DefaultSysConfDir
	}
	file = dir + "/pg_service.conf"
	if _, err := os.Stat(file); err == nil {
		var err error
		if found, err = parseServiceFile(file, service, settings); err != nil {
			return err
		}
	}
	if !found {
		return invalid("definition of service \"%s\" not found", service).
			WithEvidence("service %q is not defined in %s", service, serviceFilesSearched(env, home, dir)).
			WithFix("add a [%s] section to ~/.pg_service.conf (or the file PGSERVICEFILE names), or correct service/PGSERVICE", service)
	}
	return nil
}

func serviceFilesSearched(env map[string]string, home, dir string) string {
	var files []string
	if f, set := env["PGSERVICEFILE"]; set {
		files = append(files, f)
	} else if home != "" {
		files = append(files, home+"/.pg_service.conf")
	}
	files = append(files, dir+"/pg_service.conf")
	return strings.Join(files, " or ")
}

// parseServiceFile is libpq's parseServiceFile: "[name]" starts a section;
// in the wanted section every non-blank, non-# line is keyword=value with
// the value taken literally up to the end of the line (no quoting), and the
// first value of a keyword wins. It reports whether the section was found.
func parseServiceFile(file, service string, settings map[string]string) (bool, error) {
	f, err := os.Open(file)
	if err != nil {
		return false, failure.Wrap(failure.ConfigInvalid, err, "service file \"%s\" not found", file).
			WithEvidence("%s cannot be opened: %v", file, errors.Unwrap(err)).
			WithFix("create the service file, make it readable, or point PGSERVICEFILE at the right one")
	}
	defer f.Close()
	r := bufio.NewReader(f)
	// Values from this file; merged only on success so that an error leaves
	// nothing half-applied (libpq stops the connection anyway).
	fromService := map[string]string{}
	found := false
	for linenr := 1; ; linenr++ {
		line, rerr := r.ReadBytes('\n')
		if len(line) == 0 && rerr != nil {
			if rerr != io.EOF {
				return false, failure.Wrap(failure.ConfigInvalid, rerr, "could not read service file \"%s\"", file)
			}
			break
		}
		if len(line) >= serviceLineMax {
			return false, invalid("line %d too long in service file \"%s\"", linenr, file).
				WithEvidence("libpq reads service file lines of at most %d bytes", serviceLineMax-1).
				WithFix("shorten line %d of %s", linenr, file)
		}
		text := string(bytes.TrimFunc(line, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) }))
		if text == "" || text[0] == '#' {
			continue
		}
		if text[0] == '[' {
			if found {
				break // end of the wanted section
			}
			found = len(text) > len(service)+1 && strings.HasPrefix(text[1:], service) && text[len(service)+1] == ']'
			continue
		}
		if !found {
			continue
		}
		key, val, ok := strings.Cut(text, "=")
		if !ok {
			return false, serviceSyntaxError(file, linenr, "has no \"=\"")
		}
		if key == "service" {
			return false, invalid("nested service specifications not supported in service file \"%s\", line %d", file, linenr).
				WithEvidence("line %d of %s sets service= inside a service section", linenr, file).
				WithFix("copy the other service's settings into this section instead of naming it")
		}
		if _, known := keywordIndex[key]; !known {
			return false, serviceSyntaxError(file, linenr, "does not start with a connection keyword followed by \"=\" (no spaces around \"=\")")
		}
		if _, seen := fromService[key]; !seen {
			fromService[key] = val
		}
	}
	if found {
		for k, v := range fromService {
			if _, given := settings[k]; !given {
				settings[k] = v
			}
		}
	}
	return found, nil
}

func serviceSyntaxError(file string, linenr int, why string) *failure.Error {
	return invalid("syntax error in service file \"%s\", line %d", file, linenr).
		WithEvidence("line %d %s", linenr, why).
		WithFix("write each setting as keyword=value on its own line, e.g. host=db.example.com")
}
