package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/diag"
	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// conn is a connection block of a remote resource (upstream names and defaults).
type conn struct {
	host, user, password, privateKey, privateKeyPassword, agentSocketPath, hostKey string
	port, dialErrorLimit, perDialTimeout                                           int
	proxy                                                                          *conn
	// Given at all (even empty), as upstream tests them: an empty hostKey is a parse error, not "unpinned".
	hasPassword, hasPrivateKey, hasHostKey bool
}

func has(m resource.PropertyMap, k resource.PropertyKey) bool {
	v, ok := m[k]
	return ok && v.IsString()
}

func num(m resource.PropertyMap, k resource.PropertyKey, def int) int {
	if v, ok := m[k]; ok && v.IsNumber() {
		return int(v.NumberValue())
	}
	return def
}

func connFrom(m resource.PropertyMap) (*conn, error) {
	c := &conn{
		host: str(m, "host"), user: str(m, "user"), password: str(m, "password"),
		privateKey: str(m, "privateKey"), privateKeyPassword: str(m, "privateKeyPassword"),
		agentSocketPath: str(m, "agentSocketPath"), hostKey: strings.TrimSpace(str(m, "hostKey")),
		port: num(m, "port", 22), dialErrorLimit: num(m, "dialErrorLimit", 10), perDialTimeout: num(m, "perDialTimeout", 15),
		hasPassword: has(m, "password"), hasPrivateKey: has(m, "privateKey"), hasHostKey: has(m, "hostKey"),
	}
	if c.host == "" {
		return nil, fmt.Errorf("connection.host is empty")
	}
	if c.user == "" {
		c.user = "root"
	}
	if v, ok := m["proxy"]; ok && v.IsObject() {
		p, err := connFrom(v.ObjectValue())
		if err != nil {
			return nil, fmt.Errorf("connection.proxy: %w", err)
		}
		c.proxy = p
	}
	return c, nil
}

func (c *conn) clientConfig() (*ssh.ClientConfig, error) {
	// Auth methods in the official order (provider/pkg/provider/remote/connection.go, SSHConfig): key,
	// password, keyboard-interactive answering with the password, then the agent - used whenever a
	// socket is found (agentSocketPath, else SSH_AUTH_SOCK), even with a key or a password.
	var auths []ssh.AuthMethod
	if c.hasPrivateKey {
		var signer ssh.Signer
		var err error
		if c.privateKeyPassword != "" {
			signer, err = ssh.ParsePrivateKeyWithPassphrase([]byte(c.privateKey), []byte(c.privateKeyPassword))
		} else {
			signer, err = ssh.ParsePrivateKey([]byte(c.privateKey))
		}
		if err != nil {
			return nil, err
		}
		auths = append(auths, ssh.PublicKeys(signer))
	}
	if c.hasPassword {
		pw := c.password
		auths = append(auths, ssh.Password(pw), ssh.KeyboardInteractive(
			func(_, _ string, qs []string, _ []bool) ([]string, error) {
				answers := make([]string, len(qs))
				for i := range qs {
					answers[i] = pw
				}
				return answers, nil
			}))
	}
	sock := c.agentSocketPath
	if sock == "" {
		sock = os.Getenv("SSH_AUTH_SOCK")
	}
	if sock != "" {
		a, err := net.Dial("unix", sock)
		if err != nil {
			return nil, err
		}
		auths = append(auths, ssh.PublicKeysCallback(agent.NewClient(a).Signers))
	}
	cfg := &ssh.ClientConfig{User: c.user, Auth: auths, HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		Timeout: time.Duration(c.perDialTimeout) * time.Second}
	if c.hasHostKey {
		// Pinned: only the pinned key's own algorithm is offered (HostKeyAlgorithms = [key.Type()]; for an
		// RSA key that is "ssh-rsa" alone, as upstream), and the key must match exactly.
		want, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.hostKey))
		if err != nil {
			return nil, fmt.Errorf("failed to parse host key: %w", err)
		}
		cfg.HostKeyCallback = ssh.FixedHostKey(want)
		cfg.HostKeyAlgorithms = []string{want.Type()}
	}
	return cfg, nil
}

// retry dials like upstream's connection.go (dialWithRetry): attempts until one succeeds or more than
// dialErrorLimit have failed (-1: no limit), waiting 100 ms x1.5 per failure (at most 5 s) as
// pulumi/sdk's retry.Until does, with a status line per failure; every error is retried, even a host
// key mismatch. The final error is "after <limit> failed attempts: <last error>".
func (s *server) retry(urn, what string, limit int, f func() (*ssh.Client, error)) (*ssh.Client, error) {
	delay := 100 * time.Millisecond
	for dials := 1; ; dials++ {
		client, err := f()
		if err == nil {
			return client, nil
		}
		if limit >= 0 && dials > limit {
			return nil, fmt.Errorf("after %d failed attempts: %w", limit, err)
		}
		shown := "inf"
		if limit >= 0 {
			shown = strconv.Itoa(limit)
		}
		s.statusf(urn, diag.Info, "%s %d/%s failed: retrying", what, dials, shown)
		select {
		case <-s.ctx.Done():
			return nil, s.ctx.Err()
		case <-time.After(delay):
		}
		delay = min(time.Duration(float64(delay)*1.5), 5*time.Second)
	}
}

// dial connects to the server, through the proxy (bastion) when one is given. perDialTimeout bounds
// the TCP connect only (ssh.Dial's ClientConfig.Timeout), not the SSH handshake.
func (s *server) dial(urn string, c *conn) (*ssh.Client, error) {
	cfg, err := c.clientConfig()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(c.host, strconv.Itoa(c.port))
	if c.proxy == nil {
		return s.retry(urn, "Dial", c.dialErrorLimit, func() (*ssh.Client, error) { return ssh.Dial("tcp", addr, cfg) })
	}
	pcfg, err := c.proxy.clientConfig()
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	paddr := net.JoinHostPort(c.proxy.host, strconv.Itoa(c.proxy.port))
	via, err := s.retry(urn, "Dial proxy", c.proxy.dialErrorLimit, func() (*ssh.Client, error) { return ssh.Dial("tcp", paddr, pcfg) })
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	return s.retry(urn, "Dial from proxy", c.dialErrorLimit, func() (*ssh.Client, error) {
		nc, err := via.Dial("tcp", addr)
		if err != nil {
			return nil, err
		}
		sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
		if err != nil {
			return nil, err
		}
		return ssh.NewClient(sc, chans, reqs), nil
	})
}

// setenvRefused is upstream's text for a variable sshd did not accept (commandOutputs.go, logAndWrapSetenvErr).
const setenvRefused = "Unable to set '%s'. This only works if your SSH server is configured to accept\n\tthese variables via AcceptEnv. " +
	"Alternatively, if a Bash-like shell runs the command on the remote host, you could\n\tprefix the command itself with the " +
	"variables in the form 'VAR=value command'"

// runRemote runs a command in one SSH session (upstream: commandOutputs.go, run).
func (s *server) runRemote(urn string, sp spec, prev map[string]string) (string, string, error) {
	c, err := connFrom(sp.connection)
	if err != nil {
		return "", "", err
	}
	client, err := s.dial(urn, c)
	if err != nil {
		return "", "", err
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return "", "", err
	}
	defer sess.Close()
	// The user's environment first: a variable sshd refuses is an error (after an error diagnostic).
	for _, k := range sortedKeys(sp.env) {
		if err := sess.Setenv(k, sp.env[k]); err != nil {
			s.logf(urn, diag.Error, setenvRefused, k)
			return "", "", fmt.Errorf("could not set environment variable %q: %w", k, err)
		}
	}
	// The previous run's output, on update and delete, when not empty: a refusal is only a warning.
	for _, k := range sortedKeys(prev) {
		if prev[k] == "" {
			continue
		}
		if err := sess.Setenv(k, prev[k]); err != nil {
			s.logf(urn, diag.Warning, setenvRefused, k)
		}
	}
	if sp.stdin != "" {
		sess.Stdin = strings.NewReader(sp.stdin)
	}
	out := newCapture(s, urn, sp.logging)
	sess.Stdout, sess.Stderr = out.stdout(), out.stderr()
	done := make(chan error, 1)
	go func() { done <- sess.Run(sp.command) }()
	select {
	case err = <-done:
	case <-s.ctx.Done():
		_ = sess.Signal(ssh.SIGTERM)
		client.Close()
		err = s.ctx.Err()
	}
	stdout, stderr, combined := out.finish()
	if err != nil {
		return stdout, stderr, commandFailed(err, sp.command, combined)
	}
	return stdout, stderr, nil
}
