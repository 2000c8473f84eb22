package main

import (
	"os"
	"os/exec"
	"strings"
)

// runLocal runs a command on the machine running Pulumi, through its interpreter (default sh -c).
func (s *server) runLocal(urn string, sp spec, prev map[string]string) (string, string, error) {
	interp := sp.interpreter
	if len(interp) == 0 {
		interp = []string{"/bin/sh", "-c"}
	}
	args := append(append([]string{}, interp[1:]...), sp.command)
	cmd := exec.CommandContext(s.ctx, interp[0], args...)
	cmd.Dir = sp.dir
	cmd.Env = os.Environ()
	for k, v := range prev {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	for k, v := range sp.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if sp.stdin != "" {
		cmd.Stdin = strings.NewReader(sp.stdin)
	}
	out := newCapture(s, urn, sp.logging)
	cmd.Stdout, cmd.Stderr = out.stdout(), out.stderr()
	err := cmd.Run()
	stdout, stderr, combined := out.finish()
	if err != nil {
		return stdout, stderr, commandFailed(err, sp.command, combined)
	}
	return stdout, stderr, nil
}
