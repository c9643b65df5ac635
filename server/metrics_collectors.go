package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ferryhq/ferry/rollout"
	"github.com/ferryhq/ferry/store"
	"github.com/ferryhq/ferry/tuf"
)

// rolloutScrapeLimit bounds what one scrape reads: the newest rollouts,
// by id, and of those the running ones' execution counts.
const rolloutScrapeLimit = 200

// rolloutCollector reads rollouts from the store at scrape time: how many
// of the newest are in each state, and the execution counts (by status) of
// every running or paused one. The counts are the ones the controller
// keeps in the rollout document, so no execution is read.
type rolloutCollector struct {
	rollouts store.Rollouts
	log      *slog.Logger
	timeout  time.Duration
	states   *prometheus.Desc
	execs    *prometheus.Desc
	rolled   *prometheus.Desc
}

func newRolloutCollector(ro store.Rollouts, log *slog.Logger) *rolloutCollector {
	return &rolloutCollector{
		rollouts: ro, log: log, timeout: 2 * time.Second,
		states: prometheus.NewDesc("ferry_rollouts",
			"Rollouts by state, of the newest 200 (ABORTED counts the aborted ones).", []string{"state"}, nil),
		execs: prometheus.NewDesc("ferry_rollout_executions",
			"Executions of each running or paused rollout, by status.", []string{"rollout", "status"}, nil),
		rolled: prometheus.NewDesc("ferry_rollouts_rolled_back",
			"Rollouts, of the newest 200, that were ended with a rollback.", nil, nil),
	}
}

func (c *rolloutCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.states
	ch <- c.execs
	ch <- c.rolled
}

func (c *rolloutCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	list, err := c.rollouts.ListRollouts(ctx, "", rolloutScrapeLimit)
	if err != nil {
		// The rest of the scrape still answers: during a store outage
		// the other series matter most.
		c.log.Warn("metrics: rollouts left out of this scrape", "err", err)
		return
	}
	states, rolledBack := map[string]int{}, 0
	for _, s := range []string{rollout.StateScheduled, rollout.StateRunning, rollout.StatePaused,
		rollout.StateCompleted, rollout.StateAborted, rollout.StateCanceled} {
		states[s] = 0
	}
	for _, r := range list {
		states[r.State]++
		if r.State == rollout.StateRunning || r.State == rollout.StatePaused {
			for status, n := range r.Counts {
				ch <- prometheus.MustNewConstMetric(c.execs, prometheus.GaugeValue, float64(n), r.ID, status)
			}
		}
		if r.Rollback {
			rolledBack++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.rolled, prometheus.GaugeValue, float64(rolledBack))
	for s, n := range states {
		ch <- prometheus.MustNewConstMetric(c.states, prometheus.GaugeValue, float64(n), s)
	}
}

// tufExpiryCollector reports how long each piece of served TUF metadata
// has left before it expires, from the repository's view.
type tufExpiryCollector struct {
	repo *tuf.Repository
	desc *prometheus.Desc
}

func newTUFExpiryCollector(repo *tuf.Repository) *tufExpiryCollector {
	return &tufExpiryCollector{repo: repo, desc: prometheus.NewDesc("ferry_tuf_metadata_expiry_seconds",
		"Seconds until the served metadata of each role expires (negative: expired).", []string{"role"}, nil)}
}

func (c *tufExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *tufExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.repo.Now()
	for role, at := range c.repo.Expiries() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, at.Sub(now).Seconds(), role)
	}
}
