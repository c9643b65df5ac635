package sim

import (
	"context"
	"sync"
	"time"

	"github.com/ferryhq/ferry/agent"
)

// SimulatedConsent answers simulated devices' requests for consent as a
// person on each device would: the first time a job asks for an action it
// says "later" (Delay), and when asked again it accepts (or, with Decline,
// declines). Actor is who it says answered. It is safe for concurrent use
// by every device of a fleet.
type SimulatedConsent struct {
	Delay   time.Duration
	Actor   string
	Decline bool

	mu    sync.Mutex
	asked map[string]bool
}

// Ask implements agent.Consenter.
func (c *SimulatedConsent) Ask(_ context.Context, req agent.ConsentRequest) (agent.ConsentAnswer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.asked == nil {
		c.asked = map[string]bool{}
	}
	key := req.Job.ID + "/" + req.Action
	if c.Delay > 0 && !c.asked[key] {
		c.asked[key] = true
		return agent.ConsentAnswer{Decision: agent.DecisionDeferred, Actor: c.Actor, Later: c.Delay}, nil
	}
	delete(c.asked, key)
	if c.Decline {
		return agent.ConsentAnswer{Decision: agent.DecisionDeclined, Actor: c.Actor}, nil
	}
	return agent.ConsentAnswer{Decision: agent.DecisionAccepted, Actor: c.Actor}, nil
}
