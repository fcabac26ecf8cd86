"""The report's page: one static HTML file with its style and script, reading data scripts.

Data are ``<script>`` files rather than JSON fetched at run time because browsers refuse
``fetch`` on ``file://``; the report must open by double-click, with no server. Each layer's data
is loaded only when that layer is opened, and cards are built as they scroll into view, so a
report of thousands of neurons opens as fast as one of ten.
"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#f6f6f4}
header{background:#263238;color:#fff;padding:10px 16px}header h1{font-size:18px;margin:0}
header .run{font-size:12px;opacity:.8;word-break:break-all}
nav{padding:8px 16px;background:#eceff1;display:flex;flex-wrap:wrap;gap:8px;align-items:center}
nav a{padding:4px 10px;border-radius:12px;background:#fff;color:#263238;text-decoration:none;font-size:13px}
nav a.current{background:#263238;color:#fff}
main{padding:12px 16px}
#summary{font-size:13px;margin-bottom:8px}
#labels{display:flex;flex-wrap:wrap;gap:4px;margin:6px 0 10px}
#labels button{font-size:12px;border:1px solid #b0bec5;background:#fff;border-radius:10px;cursor:pointer}
#search{font-size:15px;padding:6px 8px;width:min(480px,90%)}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;margin:10px 0;padding:10px;content-visibility:auto;contain-intrinsic-size:auto 420px}
.card h2{font-size:15px;margin:0 0 4px}.card .label{font-size:17px;font-weight:600}
.status-ok{color:#2e7d32}.status-failed{color:#c62828}
.labels{font-size:12px;color:#555;margin:2px 0 6px}
.imgs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:132px;font-size:11px}figure img{width:128px;height:128px;object-fit:contain;background:#eee;display:block}
.parent{position:relative;width:64px;height:64px;margin-top:2px}.parent img{width:64px;height:64px;object-fit:fill}
.box{position:absolute;border:2px solid #ff1744;box-sizing:border-box}
.missing{display:block;width:128px;height:128px;background:#eee;color:#999;text-align:center;line-height:128px}
table{border-collapse:collapse;font-size:12px;margin-top:6px}td,th{border-bottom:1px solid #eee;padding:2px 6px;text-align:left}
.gen img{width:48px;height:48px;margin-right:2px}
.error{color:#c62828;font-size:12px;white-space:pre-wrap}
h3{font-size:13px;margin:8px 0 4px}
"""

SCRIPT = r"""
(function(){
var I=window.DND_INDEX, loaded={}, state={layer:null,rows:[],shown:0,query:''};
var SCORES=['mean','top-k squared','image products','top-k sq. x image products'];
window.DND_LAYER=function(k,rows){loaded[k]=rows;if(state.pending===k){state.pending=null;show(k);}};
function el(tag,attrs,text){var e=document.createElement(tag);if(attrs)for(var a in attrs)e.setAttribute(a,attrs[a]);
 if(text!==undefined&&text!==null)e.textContent=String(text);return e;}
function fmt(x){return x===null||x===undefined?'-':Number(x).toPrecision(4);}
function thumb(id,gen){var have=gen?I.generated:I.thumbs;if(!have[id])return el('span',{'class':'missing'},'not stored');
 return el('img',{src:(gen?'thumbs/g/':'thumbs/')+id+'.jpg',loading:'lazy',alt:id});}
function figure(t){var f=el('figure');f.appendChild(thumb(t.id));
 f.appendChild(el('div',null,(t.p?'crop ':'')+'act '+fmt(t.a)));
 if(t.c!==undefined)f.appendChild(el('div',{'class':'caption'},t.c));
 if(t.p){var p=el('div',{'class':'parent',title:'crop outlined on its parent '+t.p});p.appendChild(thumb(t.p));
  if(t.b){var b=el('div',{'class':'box'});b.style.left=t.b[0]+'%';b.style.top=t.b[1]+'%';b.style.width=t.b[2]+'%';b.style.height=t.b[3]+'%';p.appendChild(b);}
  f.appendChild(p);}
 return f;}
function card(layer,r){var c=el('div',{'class':'card','data-neuron':r.n});
 var h=el('h2');h.appendChild(el('span',null,layer+' / '+r.n+'  '));h.appendChild(el('span',{'class':'status-'+r.status},r.status));c.appendChild(h);
 c.appendChild(el('div',{'class':'label'},r.label===null?'(no label)':r.label));
 if(r.labels.length)c.appendChild(el('div',{'class':'labels'},'labels: '+r.labels.join(' | ')));
 if(r.error)c.appendChild(el('div',{'class':'error'},r.error));
 c.appendChild(el('h3',null,'top images'));var d=el('div',{'class':'imgs'});r.tops.forEach(function(t){d.appendChild(figure(t));});c.appendChild(d);
 if(r.crops.length){c.appendChild(el('h3',null,'attention crops'));d=el('div',{'class':'imgs'});r.crops.forEach(function(t){d.appendChild(figure(t));});c.appendChild(d);}
 if(r.cands.length){c.appendChild(el('h3',null,'candidate concepts'));var tb=el('table'),hr=el('tr');
  ['concept','score'].concat(SCORES).concat(['mean activation','images','generated']).forEach(function(x){hr.appendChild(el('th',null,x));});tb.appendChild(hr);
  r.cands.forEach(function(k){var tr=el('tr');tr.appendChild(el('td',null,k.c+(k.sp?' (sub-phrase)':'')));tr.appendChild(el('td',null,fmt(k.s)));
   k.ss.forEach(function(s){tr.appendChild(el('td',null,fmt(s)));});
   tr.appendChild(el('td',null,fmt(k.ma)));
   tr.appendChild(el('td',null,(k.n===null?'-':k.n)+(k.r?' (refused: '+k.r+')':'')));
   var g=el('td',{'class':'gen'});k.g.forEach(function(id){g.appendChild(thumb(id,true));});tr.appendChild(g);tb.appendChild(tr);});
  c.appendChild(tb);}
 return c;}
function matches(r,q){if(!q)return true;if(r.label&&r.label.toLowerCase().indexOf(q)>=0)return true;
 for(var i=0;i<r.labels.length;i++)if(r.labels[i].toLowerCase().indexOf(q)>=0)return true;return false;}
function more(){var box=document.getElementById('cards'),L=I.layers[state.layer],end=Math.min(state.rows.length,state.shown+40);
 for(;state.shown<end;state.shown++)box.insertBefore(card(L.name,state.rows[state.shown]),document.getElementById('sentinel'));}
function filter(){var q=state.query.trim().toLowerCase(),all=loaded[state.layer];
 state.rows=all.filter(function(r){return matches(r,q);});state.shown=0;
 var box=document.getElementById('cards');box.querySelectorAll('.card').forEach(function(c){c.remove();});
 document.getElementById('shown-count').textContent=state.rows.length+' of '+all.length+' neurons';more();}
function show(k){var L=I.layers[k];state.layer=k;
 document.querySelectorAll('nav a').forEach(function(a){a.className=a.dataset.layer===String(k)?'current':'';});
 document.getElementById('summary').textContent=L.name+': '+L.count+' neurons; '+Object.keys(L.status).map(function(s){return s+' '+L.status[s];}).join(', ');
 var lb=document.getElementById('labels');lb.innerHTML='';
 L.labels.forEach(function(p){var b=el('button',{type:'button',title:'show neurons labelled '+p[0]},p[0]+' ('+p[1]+')');
  b.onclick=function(){document.getElementById('search').value=p[0];state.query=p[0];filter();};lb.appendChild(b);});
 if(!loaded[k]){state.pending=k;var s=el('script',{src:'data/layer-'+k+'.js'});document.body.appendChild(s);return;}
 filter();}
function route(){var m=/layer=(\d+)/.exec(location.hash);var k=m?Number(m[1]):0;if(I.layers[k])show(k);}
document.addEventListener('DOMContentLoaded',function(){
 var nav=document.querySelector('nav');I.layers.forEach(function(L,k){var a=el('a',{href:'#layer='+k,'data-layer':k},L.name+' ('+L.count+')');nav.appendChild(a);});
 var input=document.getElementById('search');input.addEventListener('input',function(){state.query=input.value;filter();});
 new IntersectionObserver(function(es){if(es[0].isIntersecting&&state.layer!==null&&loaded[state.layer])more();}).observe(document.getElementById('sentinel'));
 window.addEventListener('hashchange',route);route();});
})();
"""


def page(title: str, run_uri: str, method: str = "") -> str:
    """The report's single page; ``method`` is the line saying which method the run used."""
    from html import escape

    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style>
<script src="data/index.js"></script>
<script>{SCRIPT}</script>
</head><body>
<header><h1>{escape(title)}</h1><div class="run">{escape(run_uri)}</div><div class="run method">{escape(method)}</div></header>
<nav><span>layers:</span></nav>
<main><div id="summary"></div><div id="labels"></div>
<input id="search" type="search" placeholder="filter by label text" aria-label="filter by label text">
<div id="shown-count"></div><div id="cards"><div id="sentinel"></div></div></main>
</body></html>
"""
