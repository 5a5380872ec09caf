package protocol

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// Sentinel errors. Wrapped errors returned by the engine can be tested with errors.Is.
var (
	// ErrClientClosed is returned by a Client after Close.
	ErrClientClosed = errors.New("anytls: client closed")
	// ErrSessionClosed is returned when the session a stream belongs to has ended.
	ErrSessionClosed = errors.New("anytls: session closed")
	// ErrStreamClosed is returned by operations on a stream closed locally.
	ErrStreamClosed = net.ErrClosed
	// ErrStreamReset is returned when the peer dropped the stream (cmdFIN from a peer without
	// half-close) or the engine reset it (stalled reader).
	ErrStreamReset = errors.New("anytls: stream reset")
	// ErrStreamStalled: the stream's reader made no progress for StreamStallTimeout while the
	// stream's buffer was full, so the stream was reset to free the session.
	ErrStreamStalled = errors.New("anytls: stream reader stalled")
	// ErrSynAckTimeout: a v2 server did not acknowledge a stream within SynAckTimeout.
	ErrSynAckTimeout = errors.New("anytls: no cmdSYNACK from server")
	// ErrRemoteRefused wraps the error text a v2 server sent in cmdSYNACK (see *RemoteError).
	ErrRemoteRefused = errors.New("anytls: server refused stream")
	// ErrHeartbeatTimeout: the session answered no heartbeat in time and was considered dead.
	ErrHeartbeatTimeout = errors.New("anytls: heartbeat timeout")
	// ErrAlert: the server sent cmdAlert (see *AlertError).
	ErrAlert = errors.New("anytls: alert from server")
	// ErrAuthFailed: the connection did not carry a valid authentication request.
	ErrAuthFailed = errors.New("anytls: authentication failed")
	// ErrNotAnyTLS: the first record was too short to hold an authentication request.
	ErrNotAnyTLS = errors.New("anytls: not an anytls connection")
	// ErrProtocol: the peer broke the protocol (bad frame, SYN before settings, ...).
	ErrProtocol = errors.New("anytls: protocol violation")
	// ErrTooManySessions / ErrTooManyStreams: a configured limit was reached.
	ErrTooManySessions = errors.New("anytls: too many sessions")
	ErrTooManyStreams  = errors.New("anytls: too many streams in session")
	// ErrIdleTimeout: the server closed a session that carried nothing for IdleSessionTimeout.
	ErrIdleTimeout = errors.New("anytls: idle session timeout")
	// ErrDeadlineExceeded is returned by stream operations whose deadline passed.
	ErrDeadlineExceeded = os.ErrDeadlineExceeded
	// ErrBadAddress: a SOCKS address could not be parsed.
	ErrBadAddress = errors.New("anytls: bad socks address")
	// ErrBadPaddingScheme: a padding scheme text is invalid (see *PaddingSchemeError).
	ErrBadPaddingScheme = errors.New("anytls: bad padding scheme")
	// ErrBadConfig: a configuration value is invalid.
	ErrBadConfig = errors.New("anytls: bad config")
)

// RemoteError carries the text a v2 server sent in a non-empty cmdSYNACK.
type RemoteError struct{ Text string }

func (e *RemoteError) Error() string        { return "anytls: server: " + e.Text }
func (e *RemoteError) Is(target error) bool { return target == ErrRemoteRefused }

// AlertError carries the text of a cmdAlert.
type AlertError struct{ Text string }

func (e *AlertError) Error() string        { return "anytls: alert from server: " + e.Text }
func (e *AlertError) Is(target error) bool { return target == ErrAlert }

// PaddingSchemeError names the line of a padding scheme that is wrong (1-based).
type PaddingSchemeError struct {
	Line   int
	Text   string
	Reason string
}

func (e *PaddingSchemeError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("anytls: bad padding scheme: %s", e.Reason)
	}
	return fmt.Sprintf("anytls: bad padding scheme: line %d %q: %s", e.Line, e.Text, e.Reason)
}
func (e *PaddingSchemeError) Is(target error) bool { return target == ErrBadPaddingScheme }

// timeoutError marks an error as a net.Error timeout.
type timeoutError struct{ err error }

func (e timeoutError) Error() string   { return e.err.Error() }
func (e timeoutError) Unwrap() error   { return e.err }
func (e timeoutError) Timeout() bool   { return true }
func (e timeoutError) Temporary() bool { return true }
