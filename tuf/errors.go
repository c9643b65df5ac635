package tuf

import (
	"errors"
	"fmt"
)

// Kind classifies a repository error so the transport can pick a status
// code without inspecting messages.
type Kind int

// The kinds of repository errors.
const (
	// KindInvalid: the submitted metadata or blob is malformed, wrongly
	// signed, or breaks a rule of the repository.
	KindInvalid Kind = iota + 1
	// KindFailedPrecondition: the request is well formed but the
	// repository is not in a state that allows it (not initialized, version
	// not increasing, blob not uploaded).
	KindFailedPrecondition
	// KindNotFound: no such bundle or metadata.
	KindNotFound
)

// Error is a repository error whose message is safe to show the caller.
type Error struct {
	Kind Kind
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func invalidf(format string, args ...any) error {
	return &Error{Kind: KindInvalid, Msg: fmt.Sprintf(format, args...)}
}

func preconditionf(format string, args ...any) error {
	return &Error{Kind: KindFailedPrecondition, Msg: fmt.Sprintf(format, args...)}
}

func notFoundf(format string, args ...any) error {
	return &Error{Kind: KindNotFound, Msg: fmt.Sprintf(format, args...)}
}

// KindOf returns the kind of a repository error, or 0 for any other error.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// ErrNotExist is returned by Storage for a key that does not exist.
var ErrNotExist = errors.New("not found in repository storage")
