#!/bin/sh
# Prints the Surefire summary of a test run from its XML reports (mvn -q hides Surefire's
# own): one line per test class, then the totals. Exits 1 when there is no report.
dir=${1:-target/surefire-reports}
set -- "$dir"/TEST-*.xml
if [ ! -f "$1" ]; then
    echo "Surefire: no test reports in $dir" >&2
    exit 1
fi
tt=0 tf=0 te=0 ts=0
for f in "$@"; do
    head=$(grep -m1 -o '<testsuite [^>]*>' "$f")
    attr() { printf '%s\n' "$head" | sed -n "s/.* $1=\"\([^\"]*\)\".*/\1/p"; }
    name=$(attr name) t=$(attr tests) fl=$(attr failures) er=$(attr errors) sk=$(attr skipped)
    tm=$(attr time)
    printf 'Tests run: %s, Failures: %s, Errors: %s, Skipped: %s, Time elapsed: %s s - in %s\n' \
        "$t" "$fl" "$er" "$sk" "$tm" "$name"
    tt=$((tt + t)) tf=$((tf + fl)) te=$((te + er)) ts=$((ts + sk))
done
printf 'Java binding (Surefire): Tests run: %s, Failures: %s, Errors: %s, Skipped: %s\n' \
    "$tt" "$tf" "$te" "$ts"
