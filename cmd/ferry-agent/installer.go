package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ferryhq/ferry/agent"
)

// installerFlags select and configure the agent's installer.
type installerFlags struct {
	kind         string
	raucConf     string
	swuArgs      string
	swuSlotVar   string
	swuSelect    string
	swuEnvConfig string
}

func (i *installerFlags) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&i.kind, "installer", envOr("FERRY_INSTALLER", ""), "exec, ab, rauc or swupdate (default: exec with --install-hook, ab with --ab-dir) [$FERRY_INSTALLER]")
	f.StringVar(&i.raucConf, "rauc-conf", envOr("FERRY_RAUC_CONF", ""), "RAUC system.conf given to rauc as --conf (default: RAUC's own) [$FERRY_RAUC_CONF]")
	f.StringVar(&i.swuArgs, "swupdate-args", envOr("FERRY_SWUPDATE_ARGS", ""), `options for every "swupdate -i", such as "-k /etc/swupdate/signer.pem -H board:1.0 -B uboot" [$FERRY_SWUPDATE_ARGS]`)
	f.StringVar(&i.swuSlotVar, "swupdate-slot-var", envOr("FERRY_SWUPDATE_SLOT_VAR", ""), "boot loader variable naming the slot booted (dual copy), such as boot_slot [$FERRY_SWUPDATE_SLOT_VAR]")
	f.StringVar(&i.swuSelect, "swupdate-select", envOr("FERRY_SWUPDATE_SELECT", ""), `software selection to install from each booted slot, such as "A=stable,copy2 B=stable,copy1" [$FERRY_SWUPDATE_SELECT]`)
	f.StringVar(&i.swuEnvConfig, "swupdate-env-config", envOr("FERRY_SWUPDATE_ENV_CONFIG", ""), "fw_env.config for fw_printenv/fw_setenv (default: /etc/fw_env.config) [$FERRY_SWUPDATE_ENV_CONFIG]")
}

// installer returns the installer the flags select.
func (i *installerFlags) installer(installHook, abDir, stateDir string) (agent.Installer, error) {
	kind := i.kind
	if kind == "" {
		switch {
		case installHook != "":
			kind = "exec"
		case abDir != "":
			kind = "ab"
		default:
			return nil, errors.New("give --installer (rauc or swupdate), --install-hook (your installer) or --ab-dir (the built-in A/B installer's directory)")
		}
	}
	switch kind {
	case "exec":
		if installHook == "" {
			return nil, errors.New("--installer exec needs --install-hook")
		}
		return agent.Exec{Command: strings.Fields(installHook)}, nil
	case "ab":
		if abDir == "" {
			return nil, errors.New("--installer ab needs --ab-dir")
		}
		return &agent.AB{Dir: abDir}, nil
	case "rauc":
		r := &agent.RAUC{StateDir: stateDir}
		if i.raucConf != "" {
			r.Command = []string{"rauc", "--conf=" + i.raucConf}
		}
		return r, nil
	case "swupdate":
		s := &agent.SWUpdate{Args: strings.Fields(i.swuArgs), SlotVar: i.swuSlotVar, StateDir: stateDir}
		for _, kv := range strings.Fields(i.swuSelect) {
			slot, sel, ok := strings.Cut(kv, "=")
			if !ok || slot == "" || sel == "" {
				return nil, fmt.Errorf("--swupdate-select: %q is not SLOT=SELECTION", kv)
			}
			if s.Select == nil {
				s.Select = map[string]string{}
			}
			s.Select[slot] = sel
		}
		if len(s.Select) > 0 && s.SlotVar == "" {
			return nil, errors.New("--swupdate-select needs --swupdate-slot-var, the variable that names the booted slot")
		}
		if i.swuEnvConfig != "" {
			s.PrintEnv = []string{"fw_printenv", "-c", i.swuEnvConfig}
			s.SetEnv = []string{"fw_setenv", "-c", i.swuEnvConfig}
		}
		return s, nil
	default:
		return nil, fmt.Errorf("--installer %q: want exec, ab, rauc or swupdate", kind)
	}
}
