# Sourced by the benchmark scripts: the ratios they report.  A figure is
# the median over the rounds of each round's ratio (two runs measured in
# the same round share the machine's state), printed with every round's
# value: this machine is noisy.
ratio() { echo "scale=2; $1 / $2" | bc -l; }
median() { printf "%s\n" "$@" | sort -g | awk '{ v[NR] = $1 }
    END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio_median() {   # name-of-array-a name-of-array-b
    local -n xa=$1 xb=$2
    local rs=() i
    for i in "${!xa[@]}"; do rs+=("$(ratio "${xa[$i]}" "${xb[$i]}")"); done
    echo "$(median "${rs[@]}")   (rounds: ${rs[*]})"
}
