// Command sigstore-kms-ferrytest is a sigstore KMS CLI plugin serving the
// test key store of package kmsplugin (keys in $FERRY_TEST_KMS_DIR), so
// that "ferrytest://NAME" key references work wherever sigstore's kms.Get
// is used. For tests only: the keys are stored in the clear.
package main

import (
	"fmt"
	"os"

	"github.com/sigstore/sigstore/pkg/signature/kms/cliplugin/handler"

	"github.com/ferryhq/ferry/internal/kmsplugin"
)

func main() {
	args, err := handler.GetPluginArgs(os.Args)
	if err != nil {
		_ = handler.WriteErrorResponse(os.Stdout, err)
		os.Exit(1)
	}
	store := kmsplugin.Store{Dir: os.Getenv(kmsplugin.DirEnv)}
	if args.InitOptions != nil {
		store.Name = args.InitOptions.KeyResourceID
		store.HashFunc = args.InitOptions.HashFunc
	}
	if _, err := handler.Dispatch(os.Stdout, os.Stdin, args, store); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
