package main

import (
	"context"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	repositoryv1 "github.com/ferryhq/ferry/proto/ferry/repository/v1"
)

// completionTimeout bounds the calls shell completion makes.
const completionTimeout = 3 * time.Second

// rolloutIDCompletion completes a rollout id argument with the newest
// rollouts in one of states (any state when nil).
func rolloutIDCompletion(a *app, states []string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 || a.resolve() != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		client, err := a.rollouts()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(completionContext(cmd), completionTimeout)
		defer cancel()
		resp, err := listRollouts(ctx, client, 200)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, r := range resp.GetRollouts() {
			if states == nil || slices.Contains(states, r.GetState()) {
				desc := r.GetState() + " " + r.GetBundle().GetTargetPath()
				if r.GetName() != "" {
					desc = r.GetName() + ", " + desc
				}
				out = append(out, cobra.CompletionWithDesc(r.GetId(), desc))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveKeepOrder
	}
}

// bundleCompletion completes a bundle's target path with the repository's.
func bundleCompletion(a *app) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if a.resolve() != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		client, err := a.repository()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(completionContext(cmd), completionTimeout)
		defer cancel()
		resp, err := client.ListBundles(ctx, connect.NewRequest(&repositoryv1.ListBundlesRequest{PageSize: 1000}))
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []cobra.Completion
		for _, b := range resp.Msg.GetBundles() {
			out = append(out, b.GetTargetPath())
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

func completionContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
