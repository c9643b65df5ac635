// Package bearer is a Connect client interceptor that sends an operator
// API key as "Authorization: Bearer <key>" on every call.
package bearer

import (
	"context"

	"connectrpc.com/connect"
)

// Token is an API key; as a connect.Interceptor it adds itself to calls.
type Token string

// Option returns the client option that sends t.
func (t Token) Option() connect.ClientOption { return connect.WithInterceptors(t) }

func (t Token) header() string { return "Bearer " + string(t) }

// WrapUnary implements connect.Interceptor.
func (t Token) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		req.Header().Set("Authorization", t.header())
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor.
func (t Token) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		conn.RequestHeader().Set("Authorization", t.header())
		return conn
	}
}

// WrapStreamingHandler implements connect.Interceptor; it changes nothing
// on the server side.
func (t Token) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}
