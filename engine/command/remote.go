package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pulumi/pulumi/sdk/v3/go/common/resource"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// conn is a connection block of a remote resource (upstream names and defaults).
type conn struct {
	host, user, password, privateKey, privateKeyPassword, agentSocketPath, hostKey string
	port, dialErrorLimit, perDialTimeout                                           int
	proxy                                                                          *conn
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
	var auths []ssh.AuthMethod
	if c.privateKey != "" {
		var signer ssh.Signer
		var err error
		if c.privateKeyPassword != "" {
			signer, err = ssh.ParsePrivateKeyWithPassphrase([]byte(c.privateKey), []byte(c.privateKeyPassword))
		} else {
			signer, err = ssh.ParsePrivateKey([]byte(c.privateKey))
		}
		if err != nil {
			return nil, fmt.Errorf("connection.privateKey cannot be parsed: %w", err)
		}
		auths = append(auths, ssh.PublicKeys(signer))
	}
	if c.password != "" {
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
	if sock == "" && c.privateKey == "" && c.password == "" {
		sock = os.Getenv("SSH_AUTH_SOCK")
	}
	if sock != "" {
		a, err := net.Dial("unix", sock)
		if err != nil {
			return nil, fmt.Errorf("connection.agentSocketPath %s: %w", sock, err)
		}
		auths = append(auths, ssh.PublicKeysCallback(agent.NewClient(a).Signers))
	}
	if len(auths) == 0 {
		return nil, fmt.Errorf("connection needs privateKey, password or an SSH agent")
	}
	hostKeyCallback := ssh.InsecureIgnoreHostKey()
	if c.hostKey != "" {
		want, _, _, _, err := ssh.ParseAuthorizedKey([]byte(c.hostKey))
		if err != nil {
			return nil, fmt.Errorf("connection.hostKey must be a public key line such as "+
				"\"ssh-ed25519 AAAA…\": %w", err)
		}
		hostKeyCallback = func(hostname string, _ net.Addr, got ssh.PublicKey) error {
			if !bytes.Equal(got.Marshal(), want.Marshal()) {
				return fmt.Errorf("host key mismatch for %s: the server offered %s %s, connection.hostKey pins %s %s",
					hostname, got.Type(), ssh.FingerprintSHA256(got), want.Type(), ssh.FingerprintSHA256(want))
			}
			return nil
		}
	}
	return &ssh.ClientConfig{
		User: c.user, Auth: auths, HostKeyCallback: hostKeyCallback,
		Timeout: time.Duration(c.perDialTimeout) * time.Second,
	}, nil
}

// dial connects, retrying up to dialErrorLimit times (-1: until cancelled) with a short backoff.
func (s *server) dial(c *conn) (*ssh.Client, error) {
	cfg, err := c.clientConfig()
	if err != nil {
		return nil, err
	}
	addr := net.JoinHostPort(c.host, strconv.Itoa(c.port))
	var via *ssh.Client
	if c.proxy != nil {
		if via, err = s.dial(c.proxy); err != nil {
			return nil, fmt.Errorf("proxy %s: %w", c.proxy.host, err)
		}
	}
	var lastErr error
	for attempt := 1; c.dialErrorLimit < 0 || attempt <= max(c.dialErrorLimit, 1); attempt++ {
		var nc net.Conn
		if via != nil {
			nc, lastErr = via.Dial("tcp", addr)
		} else {
			nc, lastErr = net.DialTimeout("tcp", addr, cfg.Timeout)
		}
		if lastErr == nil {
			_ = nc.SetDeadline(time.Now().Add(cfg.Timeout))
			sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
			if err == nil {
				_ = nc.SetDeadline(time.Time{})
				return ssh.NewClient(sc, chans, reqs), nil
			}
			nc.Close()
			lastErr = err
			if strings.Contains(err.Error(), "host key mismatch") || strings.Contains(err.Error(), "unable to authenticate") {
				break // retrying cannot fix these
			}
		}
		select {
		case <-s.ctx.Done():
			return nil, fmt.Errorf("cancelled while connecting to %s", addr)
		case <-time.After(time.Duration(min(attempt, 5)) * 500 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("cannot connect to %s@%s: %w", c.user, addr, lastErr)
}

// runRemote runs a command in one SSH session.
func (s *server) runRemote(urn string, sp spec, prev map[string]string) (string, string, error) {
	c, err := connFrom(sp.connection)
	if err != nil {
		return "", "", err
	}
	client, err := s.dial(c)
	if err != nil {
		return "", "", err
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return "", "", fmt.Errorf("opening an SSH session on %s: %w", c.host, err)
	}
	defer sess.Close()
	for k, v := range prev {
		_ = sess.Setenv(k, v) // best effort: only servers with AcceptEnv PULUMI_COMMAND_* take it
	}
	for k, v := range sp.env {
		if err := sess.Setenv(k, v); err != nil {
			return "", "", fmt.Errorf("the server refused environment variable %s (add it to sshd's AcceptEnv, "+
				"or pass the value on stdin): %w", k, err)
		}
	}
	if sp.stdin != "" {
		sess.Stdin = strings.NewReader(sp.stdin)
	}
	out, errl := loggers(s, urn, sp.logging)
	sess.Stdout, sess.Stderr = out, errl
	done := make(chan error, 1)
	go func() { done <- sess.Run(sp.command) }()
	select {
	case err = <-done:
	case <-s.ctx.Done():
		_ = sess.Signal(ssh.SIGTERM)
		client.Close()
		err = fmt.Errorf("cancelled")
	}
	stdout, stderr := out.flush(), errl.flush()
	if err != nil {
		return stdout, stderr, failure(fmt.Sprintf("remote command on %s failed", c.host), err,
			sp.logging, stdout, stderr)
	}
	return stdout, stderr, nil
}
